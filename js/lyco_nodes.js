/**
 * What every node of the pack shares in the browser: the summary text a node returns (its ui "text") is shown
 * in the node after a run; the stylesheet is loaded; and window.__lycoReady is set once the frontend has set
 * the extensions up (tests wait for it).
 */
import { app } from "../../scripts/app.js";
import { addPanel, chain, el, ensureStyles, fit, isLycoNode } from "./lyco_common.js";

const SUMMARY_HEIGHT = 120;

function showSummary(node, text) {
  if (!node.lycoSummary) {
    node.lycoSummary = el("pre", { className: "lyco-panel lyco-summary" });
    addPanel(node, "lyco_summary", node.lycoSummary, () => SUMMARY_HEIGHT);
    fit(node);
  }
  node.lycoSummary.textContent = text;
  node.lycoSummary.title = text;
}

app.registerExtension({
  name: "lyco.nodes",
  setup() {
    ensureStyles();
    window.__lycoReady = true;
  },
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!isLycoNode(nodeData.name)) return;
    chain(nodeType.prototype, "onExecuted", function (output) {
      const text = output?.text;
      if (text?.length) showSummary(this, Array.isArray(text) ? text.join("\n") : String(text));
    });
  },
});
