import { defineConfig } from "vite";
import { svelte } from "@sveltejs/vite-plugin-svelte";

// The build lands inside the Python package, so `pip install fluxrun[server]` serves it without Node.
export default defineConfig({
  plugins: [svelte()],
  base: "/",
  build: {
    outDir: "../server/fluxrun_server/static/dashboard",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    target: "es2022",
  },
  server: {
    // `npm run dev` talks to a local `fluxrun server` on its default port.
    proxy: { "/v1": "http://127.0.0.1:8400", "/healthz": "http://127.0.0.1:8400" },
  },
});
