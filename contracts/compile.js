#!/usr/bin/env node
// Compiles contracts/src with the pinned solc-js (offline: no loadRemoteVersion)
// into the JSON artifacts the Python package loads.
//   node compile.js           write python/hypergpu/chain/artifacts/*.json
//   node compile.js --check   exit 1 if the committed artifacts are stale
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const ROOT = __dirname;
const SRC = path.join(ROOT, "src");
const OUT = path.join(ROOT, "..", "python", "hypergpu", "chain", "artifacts");
const NODE_MODULES = path.join(ROOT, "node_modules");

// Cancun: supported by Monad, anvil and py-evm alike.
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

function listSources(dir, prefix = "") {
  const out = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) out.push(...listSources(path.join(dir, entry.name), rel));
    else if (entry.name.endsWith(".sol")) out.push(rel);
  }
  return out;
}

function findImports(importPath) {
  const candidate = path.join(NODE_MODULES, importPath);
  if (!candidate.startsWith(NODE_MODULES + path.sep)) return { error: `import outside node_modules: ${importPath}` };
  if (!fs.existsSync(candidate)) return { error: `not found: ${importPath} (run npm ci in contracts/)` };
  return { contents: fs.readFileSync(candidate, "utf8") };
}

function compile() {
  const sources = {};
  for (const rel of listSources(SRC)) {
    sources[`src/${rel}`] = { content: fs.readFileSync(path.join(SRC, rel), "utf8") };
  }
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
  if (errors.length) process.exit(2);

  const artifacts = {};
  for (const sourceName of Object.keys(sources)) {
    for (const [name, c] of Object.entries(output.contracts[sourceName] || {})) {
      if (!c.evm.bytecode.object) continue; // interfaces and abstract contracts
      artifacts[`${name}.json`] =
        JSON.stringify(
          {
            contractName: name,
            sourceName,
            compiler: `solc-js ${solc.version()}`,
            settings: { optimizer: SETTINGS.optimizer, evmVersion: SETTINGS.evmVersion },
            abi: c.abi,
            bytecode: "0x" + c.evm.bytecode.object,
            deployedBytecode: "0x" + c.evm.deployedBytecode.object,
          },
          null,
          2,
        ) + "\n";
    }
  }
  return artifacts;
}

function main() {
  const check = process.argv.includes("--check");
  const artifacts = compile();
  const existing = fs.existsSync(OUT) ? fs.readdirSync(OUT).filter((f) => f.endsWith(".json")) : [];
  if (check) {
    const stale = [];
    for (const [file, text] of Object.entries(artifacts)) {
      const p = path.join(OUT, file);
      if (!fs.existsSync(p) || fs.readFileSync(p, "utf8") !== text) stale.push(file);
    }
    for (const file of existing) if (!(file in artifacts)) stale.push(`${file} (no longer produced)`);
    if (stale.length) {
      process.stderr.write(`stale artifacts: ${stale.join(", ")}; run: node contracts/compile.js\n`);
      process.exit(1);
    }
    process.stdout.write(`artifacts up to date (${Object.keys(artifacts).length} contracts)\n`);
    return;
  }
  fs.mkdirSync(OUT, { recursive: true });
  for (const file of existing) if (!(file in artifacts)) fs.unlinkSync(path.join(OUT, file));
  for (const [file, text] of Object.entries(artifacts)) fs.writeFileSync(path.join(OUT, file), text);
  process.stdout.write(`wrote ${Object.keys(artifacts).length} artifacts to ${path.relative(process.cwd(), OUT)}\n`);
}

main();
