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

describe("what a notification opens", () => {
  it("reads a study's and a report's link, and writes them back", () => {
    expect(at("/#/study/7790129D-0000-4000-8000-000000000001")).toEqual({ screen: "study", uploadId: "7790129d-0000-4000-8000-000000000001" });
    expect(at("/#/reports/12")).toEqual({ screen: "reports", focus: 12 });
    expect(at("/#/notifications")).toEqual({ screen: "notifications" });
    expect(at("/#/study/<script>")).toEqual({ screen: "home" });
    expect(hrefOf({ screen: "study", uploadId: "abc-1" })).toBe("/#/study/abc-1");
    expect(hrefOf({ screen: "reports", focus: 12 })).toBe("/#/reports/12");
    expect(hrefOf({ screen: "reports" })).toBe("/#/reports");
  });
});
