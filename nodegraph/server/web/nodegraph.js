// nodegraph's editor extension (Apache-2.0, part of nodegraph; not ComfyUI code).
// A page that starts with no saved workflow shows nodegraph's SDXL inpainting graph instead of the
// frontend's built-in text-to-image graph: the frontend calls app.loadGraphData() without a graph then.
import { app } from "../../scripts/app.js";

let defaultGraph = null;
try {
  const reply = await fetch("api/nodegraph/default_workflow", { cache: "no-store" });
  if (reply.ok) defaultGraph = await reply.json();
} catch (err) {
  console.warn("nodegraph: no default workflow", err);
}

app.registerExtension({
  name: "nodegraph.defaultGraph",
  init() {
    if (!defaultGraph) return;
    const load = app.loadGraphData.bind(app);
    app.loadGraphData = (graph, ...rest) => load(graph ?? structuredClone(defaultGraph), ...rest);
  },
});
