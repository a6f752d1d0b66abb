// Builds one plugin folder's plugin.js with componentize-js (see build.sh):
//     node build.mjs [DIR [WIT_DIR [OUT.wasm]]]
// by default DIR's own wit/ and DIR/<folder name>.wasm; plugins/javascript/build.sh passes
// the repository's wit/ and an output under target/.
import { componentize } from '@bytecodealliance/componentize-js';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { basename, resolve } from 'node:path';

const dir = resolve(process.argv[2] ?? '.');
const wit = resolve(process.argv[3] ?? `${dir}/wit`);
const out = resolve(process.argv[4] ?? `${dir}/${basename(dir)}.wasm`);
// The first line of plugin.js names its world: `// world: NAME`.
const world = /^\/\/ world: *(\S+)/.exec(readFileSync(`${dir}/plugin.js`, 'utf8'))?.[1];
if (!world) {
  console.error(`${dir}/plugin.js: first line must be "// world: NAME"`);
  process.exit(1);
}
const { component } = await componentize({
  sourcePath: `${dir}/plugin.js`,
  witPath: wit,
  worldName: world,
  // Plugins get no network: without these the component would import wasi:http.
  disableFeatures: ['http', 'fetch-event'],
});
writeFileSync(`${out}.tmp`, component);
renameSync(`${out}.tmp`, out);
console.log(`built ${out}`);
