import { describe, expect, it } from "vitest";
import { hrefOf, routeOf, type Route } from "./router";

function at(url: string): Route {
  const u = new URL(url, "https://relay.example");
  return routeOf({ pathname: u.pathname, search: u.search, hash: u.hash });
}

describe("routes", () => {
  it("reads the emailed confirmation link's token", () => {
    expect(at("/verify-email?token=abc:def")).toEqual({ screen: "verify", token: "abc:def" });
    expect(at("/verify-email/?token=x")).toEqual({ screen: "verify", token: "x" });
  });

  it("reads the reset link's uid and token", () => {
    expect(at("/reset-password?uid=MQ&token=c4-1234")).toEqual({ screen: "reset", uid: "MQ", token: "c4-1234" });
  });

  it("gives empty values for a link cut short, for the page to explain", () => {
    expect(at("/verify-email")).toEqual({ screen: "verify", token: "" });
    expect(at("/reset-password?uid=MQ")).toEqual({ screen: "reset", uid: "MQ", token: "" });
  });

  it("keeps the in-app screens in the hash", () => {
    expect(at("/#/settings")).toEqual({ screen: "settings" });
    expect(at("/#/reports")).toEqual({ screen: "reports" });
    expect(hrefOf({ screen: "reports" })).toBe("/#/reports");
    expect(at("/#/register")).toEqual({ screen: "register" });
    expect(at("/#/forgot-password")).toEqual({ screen: "forgot" });
  });

  it("falls back to the main screen for anything else", () => {
    expect(at("/")).toEqual({ screen: "home" });
    expect(at("/#/nowhere")).toEqual({ screen: "home" });
    expect(at("/index.html")).toEqual({ screen: "home" });
  });

  it("writes hrefs that read back as the same route", () => {
    const routes: Route[] = [
      { screen: "home" },
      { screen: "register" },
      { screen: "forgot" },
      { screen: "settings" },
      { screen: "verify", token: "a b&c=d" },
      { screen: "reset", uid: "MQ", token: "x/y?z" },
    ];
    for (const route of routes) expect(at(hrefOf(route))).toEqual(route);
  });
});
