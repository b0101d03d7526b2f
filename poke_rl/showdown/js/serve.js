// Starts the installed pokemon-showdown server (cwd: its folder) with every finished battle
// logged: Config.logchallenges on, Config.logsdir the folder the caller gives, so each battle's
// JSON (input log, omniscient log, winner, ...) lands at LOGSDIR/YYYY-MM/FORMAT/YYYY-MM-DD/ID.log.json
// and nothing is written into the shared install's logs/.
// usage: node serve.js LOGSDIR PORT
'use strict';
const path = require('path');
const [logsdir, port] = process.argv.slice(2);
if (!logsdir || !/^[0-9]+$/.test(port || '')) {
  console.error('usage: node serve.js LOGSDIR PORT');
  process.exit(2);
}
const root = process.cwd();
// what `pokemon-showdown start --no-security --skip-build PORT` sees: the flag presets and the
// port are read from argv when the config and the sockets load
process.argv = [process.argv[0], path.join(root, 'pokemon-showdown'), 'start', '--no-security',
  '--skip-build', port];
require(path.join(root, 'dist/server/config-loader.js'));
global.Config.logchallenges = true;
global.Config.logsdir = path.resolve(logsdir);
require('module')._load(path.join(root, 'dist/server/index.js'), module, true);
