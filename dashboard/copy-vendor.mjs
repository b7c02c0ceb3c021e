// Copy the browser builds the dashboard loads from node_modules into the
// Python package, so `pip install` serves them without Node and the page
// works offline (no CDN). Run after `npm ci`: `npm run vendor`.
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const target = join(here, "..", "python", "hypergpu", "api", "static", "vendor");
const files = [["chart.js", "dist/chart.umd.js", "chart.umd.js"]];

mkdirSync(target, { recursive: true });
for (const [pkg, path, name] of files) {
  const version = JSON.parse(readFileSync(join(here, "node_modules", pkg, "package.json"), "utf8")).version;
  copyFileSync(join(here, "node_modules", pkg, path), join(target, name));
  console.log(`vendored ${pkg}@${version} ${path} -> ${name}`);
}
