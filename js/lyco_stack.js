/**
 * Row editor on "Adapter Stack": one row per adapter (on/off, adapter, model and clip strength, move up/down,
 * remove), "add adapter" (a row with no adapter chosen, or the one last picked) and "toggle all". The rows live in
 * the node's `stack` input as JSON
 * ([{name, on, strength_model, strength_clip}], validated again by the server); the text widget itself is hidden
 * (in both renderers: hideWidget) and rewritten on every edit, and read back when a workflow is loaded.
 */
import { addPanel, el, fit, getJSON, hideWidget, registerEditor, WidgetEditor } from "./lyco_common.js";

const NODE_ID = "LyCOAdapterStack";
const ROW_HEIGHT = 24; // a row's min-height (lyco.css)
const CHROME_HEIGHT = 74; // header row, button row, padding and the DOM widget's margins
const MIN_WIDTH = 460;
const PLACEHOLDER = "choose an adapter…";
let lastPicked = ""; // the adapter last chosen in any stack row: "+ add adapter" starts with it, else with none
let strengthLimit = null; // the largest |strength| the server accepts, as /lyco/adapters says (it checks rows again)

async function adapterNames() {
  const answer = await getJSON("/lyco/adapters");
  if (!answer.ok) return [];
  strengthLimit = answer.body.strength_limit ?? strengthLimit;
  return answer.body.adapters;
}

function strengthInput(value, onChange) {
  const range = strengthLimit === null ? {} : { min: String(-strengthLimit), max: String(strengthLimit) };
  const input = el("input", { type: "number", ...range, step: "0.05", value: String(value), className: "lyco-number" });
  input.addEventListener("change", () => onChange(Number.isFinite(Number(input.value)) ? Number(input.value) : 0));
  return input;
}

class StackEditor extends WidgetEditor {
  constructor(node) {
    super(node, "stack");
    hideWidget(this.widget);
    this.rows = [];
    this.names = [];
    this.list = el("div", { className: "lyco-stack-rows" });
    this.message = el("span", { className: "lyco-muted lyco-status" });
    this.root = el("div", { className: "lyco-panel lyco-stack" }, [
      el("div", { className: "lyco-stack-grid lyco-muted" }, ["on", "adapter", "model", "clip", "", "", ""].map(
        (label) => el("span", { textContent: label }))),
      this.list,
      el("div", { className: "lyco-row" }, [
        el("button", { className: "lyco-button lyco-add", textContent: "+ add adapter", on: { click: () => this.add() } }),
        el("button", { className: "lyco-button lyco-toggle-all", textContent: "toggle all",
          on: { click: () => this.toggleAll() } }),
        this.message,
      ]),
    ]);
    addPanel(node, "lyco_stack", this.root, () => CHROME_HEIGHT + Math.max(1, this.rows.length) * ROW_HEIGHT);
    adapterNames().then((names) => {
      this.names = names;
      this.readBack();
    });
    this.readBack();
  }

  read(text) {
    let rows;
    try {
      rows = JSON.parse(text || "[]");
      if (!Array.isArray(rows)) throw new Error("not a list");
    } catch (error) {
      this.root.dataset.state = "invalid";
      this.message.textContent = `stack text is not a JSON list (${error.message})`;
      return;
    }
    this.rows = rows.map((r) => ({ name: String(r?.name ?? ""), on: r?.on !== false,
      strength_model: Number(r?.strength_model ?? 1), strength_clip: Number(r?.strength_clip ?? 1) }));
    this.root.dataset.state = "ok";
    this.render();
  }

  save() {
    this.write(JSON.stringify(this.rows));
    this.render();
  }

  render() {
    this.list.replaceChildren(...this.rows.map((row, index) => this.rowElement(row, index)));
    if (!this.rows.length) this.list.append(el("div", { className: "lyco-muted", textContent: "no adapters yet" }));
    const on = this.rows.filter((r) => r.on).length;
    this.message.textContent = this.rows.length ? `${on} of ${this.rows.length} on` : "";
    this.root.dataset.rows = String(this.rows.length);
    fit(this.node, MIN_WIDTH);
  }

  rowElement(row, index) {
    const options = this.names.includes(row.name) || !row.name ? this.names : [row.name, ...this.names];
    const choices = options.map((name) =>
      el("option", { value: name, textContent: this.names.includes(name) ? name : `${name} (missing)` }));
    if (!row.name) choices.unshift(el("option", { value: "", textContent: PLACEHOLDER, disabled: true }));
    const picker = el("select", { className: "lyco-select lyco-stack-name" }, choices);
    picker.value = row.name;
    picker.addEventListener("change", () => {
      lastPicked = picker.value;
      this.update(index, { name: picker.value });
    });
    const toggle = el("input", { type: "checkbox", checked: row.on, className: "lyco-stack-on",
      title: "apply this adapter" });
    toggle.addEventListener("change", () => this.update(index, { on: toggle.checked }));
    const button = (text, title, action) =>
      el("button", { className: "lyco-button lyco-icon", textContent: text, title, on: { click: action } });
    return el("div", { className: "lyco-stack-grid lyco-stack-row", dataset: { on: String(row.on), index: String(index) } }, [
      toggle, picker,
      strengthInput(row.strength_model, (v) => this.update(index, { strength_model: v })),
      strengthInput(row.strength_clip, (v) => this.update(index, { strength_clip: v })),
      button("↑", "move up", () => this.move(index, -1)),
      button("↓", "move down", () => this.move(index, 1)),
      button("✕", "remove", () => this.remove(index)),
    ]);
  }

  update(index, change) {
    Object.assign(this.rows[index], change);
    this.save();
  }

  async add() {
    this.names = await adapterNames();
    // nothing chosen for the user (the alphabetically first file is rarely the one wanted): the adapter last
    // picked in a stack row if it is still there, else none until a file is chosen
    const name = this.names.includes(lastPicked) ? lastPicked : "";
    this.rows.push({ name, on: true, strength_model: 1, strength_clip: 1 });
    this.save();
  }

  remove(index) {
    this.rows.splice(index, 1);
    this.save();
  }

  move(index, step) {
    const target = index + step;
    if (target < 0 || target >= this.rows.length) return;
    [this.rows[index], this.rows[target]] = [this.rows[target], this.rows[index]];
    this.save();
  }

  toggleAll() {
    const on = !this.rows.every((r) => r.on);
    this.rows.forEach((r) => (r.on = on));
    this.save();
  }
}

registerEditor("lyco.stack", NODE_ID, (node) => new StackEditor(node));
