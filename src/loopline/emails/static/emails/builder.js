// Email editor: a "Code" textarea and a "Visual builder" (GrapesJS + grapesjs-mjml) over the same body field.
// The builder only edits the MJML; saving always goes through the normal form, where the server compiles the MJML
// (mrml) and refuses an email that cannot render. No inline script: data comes from json_script and data-* attributes.
(function () {
  "use strict";

  function init() {
    var form = document.getElementById("email-form");
    if (!form) { return; }
    var textarea = form.querySelector("textarea[name=body]");
    var format = form.querySelector("select[name=body_format]");
    var modeInput = document.getElementById("editor-mode");
    var code = document.getElementById("code-editor");
    var builder = document.getElementById("builder");
    var note = document.getElementById("builder-note");
    var blocksData = document.getElementById("dynamic-blocks");
    var dynamicBlocks = blocksData ? JSON.parse(blocksData.textContent) : [];
    var editor = null;
    var loadedHtml = null;

    function isMjml() { return !format || format.value === "mjml"; }

    function pressed(mode) {
      form.querySelectorAll("[data-editor-mode]").forEach(function (b) {
        b.setAttribute("aria-pressed", b.getAttribute("data-editor-mode") === mode ? "true" : "false");
      });
    }

    function plugin() {
      var mod = window["grapesjs-mjml"];
      return mod && mod.default ? mod.default : mod;
    }

    function addLooplineBlocks(ed) {
      var bm = ed.BlockManager;
      var category = "Loopline";
      bm.add("ll-greeting", {label: "Greeting", category: category,
        content: '<mj-text font-size="18px">Hello {{ prospect.first_name|default("there", true) }},</mj-text>'});
      bm.add("ll-footer", {label: "Unsubscribe footer", category: category,
        content: '<mj-section><mj-column><mj-text font-size="11px" color="#666666" align="center">' +
          '<a href="{{ unsubscribe_url }}">Unsubscribe</a> · <a href="{{ preferences_url }}">Email preferences</a>' +
          '<br>{{ bu.name }} · {{ bu.postal_address }}</mj-text></mj-column></mj-section>'});
      dynamicBlocks.forEach(function (b) {
        bm.add("ll-dynamic-" + b.key, {label: "Dynamic: " + b.name, category: category,
          content: dynamicText(b.key)});
      });
    }

    function dynamicText(key) { return '<mj-text>{{ dynamic("' + key + '") }}</mj-text>'; }

    // GrapesJS parses MJML as HTML, where <mj-image ... /> is not self-closing and would swallow its siblings:
    // write such elements as an explicit open/close pair first (quoted attribute values may contain ">" or "/").
    function expandSelfClosing(mjml) {
      return mjml.replace(/<(mj-[a-z-]+)((?:"[^"]*"|'[^']*'|[^'">])*?)\s*\/>/g, "<$1$2></$1>");
    }

    function startBuilder() {
      if (typeof window.grapesjs === "undefined" || !plugin()) {
        note.textContent = "The visual builder could not be loaded; use the code editor.";
        note.hidden = false;
        return false;
      }
      if (editor) { editor.destroy(); editor = null; }
      builder.hidden = false;
      editor = window.grapesjs.init({
        container: "#gjs",
        height: "680px",
        fromElement: false,
        storageManager: false,
        plugins: [plugin()],
        pluginsOpts: {},
        components: expandSelfClosing(textarea.value)
      });
      addLooplineBlocks(editor);
      window.looplineBuilder = editor;  // tests and curious users read the editor from here
      editor.on("load", function () {
        // Open the block list (with the Loopline blocks) rather than the style manager.
        var blocksButton = editor.Panels.getButton("views", "open-blocks");
        if (blocksButton) { blocksButton.set("active", true); }
        loadedHtml = editor.getHtml();
        builder.setAttribute("data-ready", "true");
      });
      return true;
    }

    function syncBack() {
      if (!editor || modeInput.value !== "builder") { return; }
      // A text still being edited in place is committed by deselecting it.
      editor.select();
      var html = editor.getHtml();
      // Untouched in the builder: keep the MJML exactly as written (the builder normalises markup it re-exports).
      if (html !== loadedHtml) { textarea.value = html; }
    }

    function setMode(mode) {
      if (mode === "builder" && !isMjml()) {
        note.hidden = false;
        mode = "code";
      } else {
        note.hidden = true;
      }
      if (mode === "builder") {
        if (!startBuilder()) { mode = "code"; }
      } else {
        syncBack();
        if (editor) { editor.destroy(); editor = null; window.looplineBuilder = null; }
        builder.hidden = true;
        builder.removeAttribute("data-ready");
      }
      code.hidden = mode === "builder";
      modeInput.value = mode;
      pressed(mode);
    }

    function insertAtCursor(text) {
      var start = textarea.selectionStart || 0;
      var end = textarea.selectionEnd || 0;
      textarea.value = textarea.value.slice(0, start) + text + textarea.value.slice(end);
      textarea.focus();
      textarea.selectionStart = textarea.selectionEnd = start + text.length;
    }

    function insertInBuilder(key) {
      var selected = editor.getSelected();
      var column = null;
      var target = selected;
      while (target && target.get("type") !== "mj-column") { target = target.parent(); }
      column = target || editor.getWrapper().find("mj-column")[0];
      if (!column) { return; }
      var at = undefined;
      if (selected && selected.parent() === column) { at = selected.index() + 1; }
      var added = column.append(dynamicText(key), at === undefined ? {} : {at: at});
      if (added && added[0]) { editor.select(added[0]); }
    }

    form.querySelectorAll("[data-editor-mode]").forEach(function (b) {
      b.addEventListener("click", function () { setMode(b.getAttribute("data-editor-mode")); });
    });
    form.querySelectorAll("[data-insert-dynamic]").forEach(function (b) {
      b.addEventListener("click", function () {
        var key = b.getAttribute("data-insert-dynamic");
        if (editor && modeInput.value === "builder") { insertInBuilder(key); } else {
          insertAtCursor('{{ dynamic("' + key + '") }}');
        }
      });
    });
    if (format) {
      format.addEventListener("change", function () { if (!isMjml() && modeInput.value === "builder") { setMode("code"); } });
    }
    form.addEventListener("submit", syncBack);
    setMode(form.getAttribute("data-editor") === "builder" ? "builder" : "code");
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
