// Builds the CommonJS flavour of the client (sente-lite.cjs) and its
// declarations (sente-lite.d.cts) from the ES module and sente-lite.d.ts,
// and copies the project's LICENSE beside them.  Run by `npm pack` /
// `npm publish` (prepack), and by the tests.  No dependencies: the module
// has exactly two named exports and a default one, all at top level.
import { readFileSync, writeFileSync, copyFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const src = readFileSync(join(here, 'sente-lite.js'), 'utf8');

let out = src
  .replace(/^export class (\w+)/gm, 'class $1')
  .replace(/^export default SenteLite;\s*$/m, '');
if (/^export /m.test(out) || /\bimport\s*[({'"\w]/.test(out.replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, '')))
  throw new Error('sente-lite.js has exports or imports build-cjs.mjs does not know');
out = '// Generated from sente-lite.js by build-cjs.mjs -- do not edit.\n\'use strict\';\n' + out +
  '\nmodule.exports = { SenteLite, SenteLiteError, default: SenteLite };\n';
writeFileSync(join(here, 'sente-lite.cjs'), out);

const dts = readFileSync(join(here, 'sente-lite.d.ts'), 'utf8')
  .replace(/^export default SenteLite;\s*$/m, '');
writeFileSync(join(here, 'sente-lite.d.cts'),
  '// Generated from sente-lite.d.ts by build-cjs.mjs -- do not edit.\n' + dts +
  '\ndeclare const _default: typeof SenteLite;\nexport { _default as default };\n');
copyFileSync(join(here, '..', 'LICENSE'), join(here, 'LICENSE'));
