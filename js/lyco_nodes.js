/**
 * What every node of the pack shares in the browser: the summary text a node returns (its ui "text") is shown
 * in the node after a run; the stylesheet is loaded; and window.__lycoReady is set once the frontend has set
 * the extensions up (tests wait for it).
 *
 * The summary panel is added, empty and hidden, when the node is created, and shown by the first run: frontend
 * 1.32's Vue renderer stops noticing widgets added to a node once its input links have changed, so a panel added
 * only after a run would never appear there. Classic canvas: `widget.hidden` and a zero layout size keep it out of
 * the node until then (1.32 lays hidden widgets out too). Vue renderer: an empty summary takes no room (lyco.css);
 * 1.58 also reads `widget.hidden`. `options.hidden` is left alone: 1.32 copies it once and would never show the panel.
 */
import { app } from "../../scripts/app.js";
import { addPanel, chain, el, ensureStyles, fit, isLycoNode } from "./lyco_common.js";

const SUMMARY_HEIGHT = 120;

const NO_ROOM = () => ({ minHeight: 0, maxHeight: 0, minWidth: 0 });

function attachSummary(node) {
  node.lycoSummary = el("pre", { className: "lyco-panel lyco-summary" });
  const widget = addPanel(node, "lyco_summary", node.lycoSummary, () => SUMMARY_HEIGHT);
  widget.lycoLayoutSize = widget.computeLayoutSize;
  widget.computeLayoutSize = NO_ROOM;
  widget.hidden = true;
  node.lycoSummaryWidget = widget;
}

function showSummary(node, text) {
  if (!node.lycoSummary) attachSummary(node);
  node.lycoSummary.textContent = text;
  node.lycoSummary.title = text;
  const widget = node.lycoSummaryWidget;
  if (widget.hidden) {
    widget.hidden = false;
    widget.computeLayoutSize = widget.lycoLayoutSize;
    fit(node);
  }
}

/**
 * Strength fields take typed decimals in the Vue renderer too: frontend 1.32's Vue number field (PrimeVue
 * InputNumber, given the widget's options) refuses a typed decimal point unless `maxFractionDigits` is set, so
 * "0.85" became 85 (arrows and drag worked). Set before the Vue renderer copies the widgets; the canvas ignores it.
 */
function allowDecimals(node) {
  for (const widget of node.widgets ?? []) {
    if (widget.type === "number" && widget.name.startsWith("strength")) {
      widget.options ??= {};
      widget.options.maxFractionDigits ??= 4;
    }
  }
}

app.registerExtension({
  name: "lyco.nodes",
  setup() {
    ensureStyles();
    window.__lycoReady = true;
  },
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!isLycoNode(nodeData.name)) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      allowDecimals(this);
      attachSummary(this);
    });
    chain(nodeType.prototype, "onExecuted", function (output) {
      const text = output?.text;
      if (text?.length) showSummary(this, Array.isArray(text) ? text.join("\n") : String(text));
    });
  },
});
