/**
 * Helpers shared by the ComfyUI-LyCO frontend extensions: which nodes are ours, JSON from our routes, a tiny DOM
 * builder, widget lookup, callback chaining, DOM widgets that size the node, and the stylesheet (lyco.css, loaded
 * once from next to this file). Only the stable frontend API is used (node.addDOMWidget, api.fetchApi).
 */
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

/** Our nodes that pick an adapter file (an `adapter_name` input): every loader, Adapter Info, … */
export function isAdapterNode(nodeData) {
  const inputs = nodeData.input ?? {};
  return isLycoNode(nodeData.name) && !!(inputs.required?.adapter_name ?? inputs.optional?.adapter_name);
}

/** Every node of this pack. */
export function isLycoNode(nodeName) {
  return nodeName.startsWith("LyCO");
}

/** GET one of our routes: {ok, status, body} (body is null when the answer is not JSON). */
export async function getJSON(path) {
  const response = await api.fetchApi(path, { cache: "no-store" });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  return { ok: response.ok, status: response.status, body };
}

/** document.createElement with properties ({className, textContent, dataset, style, on: {event: fn}}) and children. */
export function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  const { dataset, style, on, ...rest } = props;
  Object.assign(node, rest);
  Object.assign(node.dataset, dataset ?? {});
  Object.assign(node.style, style ?? {});
  for (const [event, handler] of Object.entries(on ?? {})) node.addEventListener(event, handler);
  for (const child of children) node.append(child);
  return node;
}

export function findWidget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

/** Replace obj[prop] by a function that runs the original first, then `after` (same this and arguments). */
export function chain(obj, prop, after) {
  const original = obj[prop];
  obj[prop] = function (...args) {
    const result = original?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

/** Set a widget's value the way a user edit does (callback included), e.g. from our editors. */
export function setWidgetValue(node, widget, value) {
  widget.value = value;
  widget.callback?.(value, app.canvas, node);
  node.setDirtyCanvas?.(true, true);
}

/**
 * A widget that stays in the node (its value is still saved and sent) but is never shown: the classic canvas
 * reads `widget.hidden` and our zero layout size; the Vue renderer ("Nodes 2.0") reads `widget.options.hidden`
 * (frontends 1.32 to 1.58). Call it while the node is created, before the Vue renderer copies the widget list.
 */
export function hideWidget(widget) {
  widget.hidden = true;
  widget.options ??= {};
  widget.options.hidden = true;
  widget.computeLayoutSize = () => ({ minHeight: 0, maxHeight: 0, minWidth: 0 });
}

/**
 * A DOM widget that never goes into the prompt or the saved widget values; `height()` gives its wanted height.
 * The node grows to fit whenever `fit(node)` is called after the content changed. Classic canvas: the frontend
 * gives the element `height()` (less its margins). Vue renderer: the element sits in the node's DOM and is as tall
 * as its content (lyco.css keeps panels from collapsing or growing without bound there).
 */
export function addPanel(node, name, element, height) {
  const widget = node.addDOMWidget(name, "lyco-panel", element, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: height,
    getMaxHeight: height,
  });
  widget.serialize = false;
  keepPanelOrder(node, widget);
  return widget;
}

/** Our panels, top to bottom, whichever extension added its panel first. */
const PANEL_ORDER = ["lyco_info", "lyco_blocks", "lyco_stack", "lyco_summary"];

function keepPanelOrder(node, widget) {
  const rank = (w) => PANEL_ORDER.indexOf(w.name);
  const widgets = node.widgets;
  const index = widgets.indexOf(widget);
  const first = widgets.findIndex((w) => rank(w) > rank(widget));
  if (rank(widget) < 0 || first < 0 || first > index) return;
  widgets.splice(index, 1);
  widgets.splice(first, 0, widget);
}

/**
 * Make the node at least `minWidth` wide, its height unchanged. Frontend 1.32's Vue renderer takes a node's size
 * only when the node is added to the graph (later setSize calls do not reach it; its height follows the content
 * anyway), so editors call this synchronously while the node is created.
 */
export function widen(node, minWidth) {
  if (node.size[0] < minWidth) node.setSize([minWidth, node.size[1]]);
}

/** Resize the node's height to fit its widgets, at least `minWidth` wide (a wider user width stays), and redraw. */
export function fit(node, minWidth = 0) {
  const wanted = node.computeSize();
  node.setSize([Math.max(node.size[0], wanted[0], minWidth), wanted[1]]);
  node.setDirtyCanvas?.(true, true);
}

/** Load lyco.css once. */
export function ensureStyles() {
  if (document.getElementById("lyco-styles")) return;
  document.head.append(
    el("link", { id: "lyco-styles", rel: "stylesheet", href: new URL("./lyco.css", import.meta.url).href }),
  );
}

/**
 * An editor bound to one text widget of a node: `write(text)` sets the widget as a user edit would, and any
 * other change of the widget (a hand edit) calls `readBack()`, which hands the text to the subclass's `read`.
 */
export class WidgetEditor {
  constructor(node, widgetName) {
    this.node = node;
    this.widget = findWidget(node, widgetName);
    chain(this.widget, "callback", () => {
      if (!this.writing) this.readBack();
    });
  }

  readBack() {
    this.read(String(this.widget.value ?? ""));
  }

  write(text) {
    this.writing = true;
    try {
      setWidgetValue(this.node, this.widget, text);
    } finally {
      this.writing = false;
    }
  }
}

/**
 * Register extension `name` giving every `nodeId` node the editor `create(node)` returns, made synchronously while
 * the node is created (so its panel and size are there before the Vue renderer builds the node); the editor reads
 * the widget again when a workflow restores the node's values (no widget callback fires then).
 */
export function registerEditor(name, nodeId, create) {
  app.registerExtension({
    name,
    beforeRegisterNodeDef(nodeType, nodeData) {
      if (nodeData.name !== nodeId) return;
      chain(nodeType.prototype, "onNodeCreated", function () {
        try {
          this.lycoEditor = create(this);
        } catch (error) {
          console.warn(`[LyCO] ${name} unavailable:`, error);
        }
      });
      chain(nodeType.prototype, "onConfigure", function () {
        this.lycoEditor?.readBack();
      });
    },
  });
}
