/// <reference types="vitest/config" />
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";
import { VitePWA } from "vite-plugin-pwa";

export default defineConfig({
  plugins: [
    react(),
    VitePWA({
      strategies: "injectManifest",
      srcDir: "src",
      filename: "sw.ts",
      registerType: "autoUpdate",
      injectRegister: false,
      manifest: {
        name: "RelayPACS",
        short_name: "RelayPACS",
        description: "Send imaging studies to the hospital PACS, even over a bad network.",
        theme_color: "#0b5cad",
        background_color: "#ffffff",
        display: "standalone",
        start_url: "/",
        scope: "/",
        icons: [
          { src: "/icon-192.png", sizes: "192x192", type: "image/png" },
          { src: "/icon-512.png", sizes: "512x512", type: "image/png" },
          { src: "/icon-512.png", sizes: "512x512", type: "image/png", purpose: "maskable" },
        ],
      },
      injectManifest: {
        globPatterns: ["**/*.{js,css,html,png,svg,wasm,webmanifest}"],
      },
      devOptions: { enabled: false },
    }),
  ],
  build: { target: "es2022" },
  worker: { format: "es" },
  test: {
    environment: "node",
    include: ["src/**/*.test.ts"],
    // Most of the suite's time is its tests' real timers (the uploader's stall, backoff
    // and write-pacing tests wait out seconds), not CPU: on two cores, 4 files at once
    // took 18 s against 58 s with vitest's default of one file per core less one,
    // for the same 21 s of CPU.
    maxWorkers: 4,
  },
});
