// Steps per second of d3-force-3d on the same particles: forceManyBody + forceLink on the 10-NN graph
// of the output vectors (rest length = scaled output-vector distance) + forceCenter.
// usage: node d3_layout.mjs INPUT.json TICKS   (input: {"positions": [[x,y,z]...], "links": [[i,j,d]...]})
import { readFileSync } from "node:fs";
import { forceSimulation, forceManyBody, forceLink, forceCenter } from "d3-force-3d";

const [input, ticksText] = process.argv.slice(2);
const data = JSON.parse(readFileSync(input, "utf8"));
const nodes = data.positions.map(([x, y, z], index) => ({ index, x, y, z }));
const links = data.links.map(([source, target, distance]) => ({ source, target, distance }));
const simulation = forceSimulation(nodes, 3)
  .force("charge", forceManyBody())
  .force("link", forceLink(links).distance((l) => l.distance))
  .force("center", forceCenter())
  .stop();
simulation.tick(2); // warm up the JIT
const ticks = Number(ticksText);
const times = [];
for (let i = 0; i < ticks; i++) {
  const start = process.hrtime.bigint();
  simulation.tick();
  times.push(Number(process.hrtime.bigint() - start) / 1e9);
}
times.sort((a, b) => a - b);
console.log(JSON.stringify({ median_step_s: times[Math.floor(times.length / 2)], ticks }));
