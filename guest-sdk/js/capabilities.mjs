// Prints the capabilities (`state`, `client`, `http`) a plugin uses (and
// `manifest` when it exports one), one per line, for
// build.sh to build it against a world that imports those and no others
// (componentize-js imports every interface of its world, used or not).
//
//   node capabilities.mjs CACHE_DIR ENTRY BUNDLE_CONFIG
//
// It bundles ENTRY the way `jco componentize --bundle` does (rolldown, the
// same config) and reads which `sluice:plugin/<interface>` modules the
// bundled code still imports: the config tells rolldown that these imports
// have no side effects, so the SDK's import of `state` is dropped when
// nothing the plugin uses needs it. (The code, not the chunk's `imports`
// list: that one keeps every import rolldown saw.) ~0.2 s.
import { pathToFileURL } from 'node:url';
import { dirname, join, resolve } from 'node:path';

const [cache, entry, configPath] = process.argv.slice(2);
const { rolldown } = await import(pathToFileURL(join(cache, 'node_modules/rolldown/dist/index.mjs')).href);
const { default: config } = await import(pathToFileURL(resolve(configPath)).href);
const build = await rolldown({ ...config, input: resolve(entry), cwd: dirname(resolve(entry)), platform: 'neutral' });
try {
  const { output } = await build.generate({ format: 'esm', codeSplitting: false });
  const code = output.map((chunk) => chunk.code ?? '').join('\n');
  // `metrics` and `http-failure` (asked by the SDK's `fetch`) are no
  // capabilities (no grant), but are imported only when used too.
  for (const capability of ['state', 'client', 'metrics', 'http-failure']) {
    if (new RegExp(`from ["']sluice:plugin/${capability}@|import ["']sluice:plugin/${capability}@`).test(code)) console.log(capability);
  }
  // Outbound HTTP is the engine's own `fetch` (StarlingMonkey over
  // wasi:http), not an import of ours: a call to it is what tells.
  if (/(^|[^.\w$])fetch\s*\(|globalThis\.fetch\b/.test(code)) console.log('http');
  // Not a capability: the `manifest` export, when the entry exports it.
  if (output.some((chunk) => chunk.isEntry && chunk.exports?.includes('manifest'))) console.log('manifest');
} finally {
  await build.close();
}
