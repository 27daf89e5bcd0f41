// Bundles the web app into dist/ (served by the adapter): one ES module,
// the stylesheet, the page, and libolm's WebAssembly.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

mkdirSync("dist", { recursive: true });
await build({
  entryPoints: ["src/main.ts"],
  bundle: true,
  format: "esm",
  target: "es2022",
  outfile: "dist/app.js",
  sourcemap: true,
  minify: false,
  logLevel: "warning",
});
copyFileSync("src/index.html", "dist/index.html");
copyFileSync("src/app.css", "dist/app.css");
copyFileSync("node_modules/@towns-protocol/olm/olm.wasm", "dist/olm.wasm");
