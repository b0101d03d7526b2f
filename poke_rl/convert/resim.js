// Re-simulates battles from their input logs with the installed pokemon-showdown simulator.
// usage: node resim.js SHOWDOWN_DIR
// stdin: one JSON object per line, {"formatid": ID, "lines": [INPUT LINE, ...]}, lines already
// validated by poke-rl (start, player and choice lines only). stdout: one JSON object per
// request, {"chunks": [OUTPUT CHUNK, ...]} (each "update\n...", "sideupdate\npN\n..." or
// "end\n{...}", in the order the simulator emitted them), or {"error": KIND, "message": TEXT}
// with KIND "unsupported_format" or "resim_failed". Every input line is one write, so the
// simulator emits every decision point (its updates and requests) separately.
'use strict';
const path = require('path');
const readline = require('readline');

const root = process.argv[2];
if (!root) {
  console.error('usage: node resim.js SHOWDOWN_DIR');
  process.exit(2);
}
const {BattleStream} = require(path.join(root, 'dist/sim/battle-stream.js'));
const {Dex} = require(path.join(root, 'dist/sim/dex.js'));

const MAX_OUTPUT_CHARS = 64 * 1024 * 1024;

function checkFormat(formatid) {
  const format = Dex.formats.get(formatid);
  if (!format.exists) return `the simulator has no format ${JSON.stringify(formatid)}`;
  if (format.gameType !== 'singles') return `${format.id} is ${format.gameType}, not singles`;
  const gen = Dex.forFormat(format).gen;
  if (gen !== 9) return `${format.id} is generation ${gen}, the converter reads generation 9`;
  return null;
}

function resimulate(lines) {
  const stream = new BattleStream({noCatch: true, keepAlive: true});
  const chunks = [];
  let chars = 0;
  stream.push = (chunk) => {
    chars += chunk.length;
    if (chars > MAX_OUTPUT_CHARS) throw new Error(`output over ${MAX_OUTPUT_CHARS} characters`);
    chunks.push(chunk);
  };
  for (const line of lines) stream._write(line);
  return chunks;
}

function answer(request) {
  const problem = checkFormat(String(request.formatid));
  if (problem) return {error: 'unsupported_format', message: problem};
  try {
    return {chunks: resimulate(request.lines)};
  } catch (err) {
    return {error: 'resim_failed', message: String((err && err.message) || err).split('\n')[0]};
  }
}

const input = readline.createInterface({input: process.stdin, crlfDelay: Infinity});
input.on('line', (text) => {
  let reply;
  try {
    const request = JSON.parse(text);
    if (!Array.isArray(request.lines) || !request.lines.every((l) => typeof l === 'string')) {
      throw new Error('lines must be a list of strings');
    }
    reply = answer(request);
  } catch (err) {
    reply = {error: 'resim_failed', message: `bad request: ${err.message}`};
  }
  process.stdout.write(JSON.stringify(reply) + '\n');
});
