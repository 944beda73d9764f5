/** A tiny router. The two pages an email links to are real paths (/verify-email,
 * /reset-password), served by Django and by the service worker's app shell; the screens
 * reached from inside the app live in the hash (#/settings), so the server only ever has to
 * serve "/" for them and a reload keeps the screen. */
import { useEffect, useState } from "react";

export type Route =
  | { screen: "home" }
  | { screen: "register" }
  | { screen: "forgot" }
  | { screen: "settings" }
  | { screen: "reports"; focus?: number }
  | { screen: "notifications" }
  | { screen: "dashboard" }
  | { screen: "study"; uploadId: string }
  | { screen: "verify"; token: string }
  | { screen: "reset"; uid: string; token: string };

const HASH_SCREENS = {
  "#/register": "register",
  "#/forgot-password": "forgot",
  "#/settings": "settings",
  "#/reports": "reports",
  "#/notifications": "notifications",
  "#/dashboard": "dashboard",
} as const;

export function routeOf(location: { pathname: string; search: string; hash: string }): Route {
  const query = new URLSearchParams(location.search);
  const path = location.pathname.replace(/\/+$/, "");
  if (path === "/verify-email") return { screen: "verify", token: query.get("token") ?? "" };
  if (path === "/reset-password") return { screen: "reset", uid: query.get("uid") ?? "", token: query.get("token") ?? "" };
  // What a notification opens: a study by its upload, a report.
  const study = /^#\/study\/([0-9a-fA-F-]{1,64})$/.exec(location.hash);
  if (study) return { screen: "study", uploadId: study[1]!.toLowerCase() };
  const report = /^#\/reports\/(\d{1,12})$/.exec(location.hash);
  if (report) return { screen: "reports", focus: Number(report[1]) };
  const screen = HASH_SCREENS[location.hash as keyof typeof HASH_SCREENS];
  return screen ? { screen } : { screen: "home" };
}

export function hrefOf(route: Route): string {
  switch (route.screen) {
    case "home":
      return "/";
    case "register":
      return "/#/register";
    case "forgot":
      return "/#/forgot-password";
    case "settings":
      return "/#/settings";
    case "reports":
      return route.focus ? `/#/reports/${route.focus}` : "/#/reports";
    case "notifications":
      return "/#/notifications";
    case "dashboard":
      return "/#/dashboard";
    case "study":
      return `/#/study/${encodeURIComponent(route.uploadId)}`;
    case "verify":
      return `/verify-email?${new URLSearchParams({ token: route.token })}`;
    case "reset":
      return `/reset-password?${new URLSearchParams({ uid: route.uid, token: route.token })}`;
  }
}

const CHANGE = "relaypacs:navigate";

/** Go to `route`, adding a history entry so the browser's Back button returns. */
export function navigate(route: Route): void {
  window.history.pushState(null, "", hrefOf(route));
  window.dispatchEvent(new Event(CHANGE));
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => routeOf(window.location));
  useEffect(() => {
    const update = () => setRoute(routeOf(window.location));
    for (const name of ["popstate", "hashchange", CHANGE]) window.addEventListener(name, update);
    return () => {
      for (const name of ["popstate", "hashchange", CHANGE]) window.removeEventListener(name, update);
    };
  }, []);
  return route;
}
