/* Loopline tracker. Page views, sessions and UTM parameters for one business unit ([M2]); consent and GPC ([M3]). */
(function (w, d, n) {
  "use strict";
  var C = {{ config_json|safe }};
  if (w.__looplineTracker && w.__looplineTracker[C.bu]) { return; }
  (w.__looplineTracker = w.__looplineTracker || {})[C.bu] = true;
  var COOKIE = "visitor_id" + C.bu, CONSENT = "loopline_consent" + C.bu, YEAR = 31536000;
  var noTrack = n.globalPrivacyControl === true || n.doNotTrack === "1" || w.doNotTrack === "1";

  function getCookie(name) {
    var m = d.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return m ? decodeURIComponent(m[1]) : null;
  }
  function setCookie(name, value, maxAge) {
    d.cookie = name + "=" + value + "; max-age=" + maxAge + "; path=/; SameSite=Lax" +
      (location.protocol === "https:" ? "; Secure" : "");
  }
  function uuid() {
    if (w.crypto && w.crypto.randomUUID) { return w.crypto.randomUUID().replace(/-/g, ""); }
    var b = new Uint8Array(16); w.crypto.getRandomValues(b); b[6] = (b[6] & 15) | 64; b[8] = (b[8] & 63) | 128;
    var s = ""; for (var i = 0; i < 16; i++) { s += (b[i] + 256).toString(16).slice(1); } return s;
  }
  function consented() { return !C.consent || getCookie(CONSENT) === "1"; }
  function allowed() { return !noTrack && consented(); }
  function visitorId(create) {
    if (!allowed()) { return null; }
    var v = getCookie(COOKIE);
    if (!/^[0-9a-f]{32}$/.test(v || "")) { v = create ? uuid() : null; }
    if (v) { setCookie(COOKIE, v, YEAR); }
    return v;
  }
  function send(hits, attempt) {
    var v = visitorId(true);
    if (!v) { return; }
    attempt = attempt || 0;
    var body = JSON.stringify({ visitor: v, hits: hits });
    var retry = function () { if (attempt < 4) { setTimeout(function () { send(hits, attempt + 1); }, 1000 * Math.pow(2, attempt)); } };
    try {
      fetch(C.endpoint, { method: "POST", body: body, keepalive: true, credentials: "omit", mode: "cors",
        headers: { "Content-Type": "text/plain" } })
        .then(function (r) { if (r.status >= 500 || r.status === 429) { retry(); } }, retry);
    } catch (e) { retry(); }
  }
  function track() {
    if (!allowed()) { return; }
    var hit = { type: "pageview", url: location.href, title: d.title, ts: Date.now() };
    if (d.referrer) { hit.referrer = d.referrer; }
    if (C.campaign) { hit.campaign = C.campaign; }
    send([hit]);
  }
  function identifyFromLink() {
    var m = /[?&]lp_id=([A-Za-z0-9_-]+)/.exec(location.search);
    if (m && allowed()) { send([{ type: "identify", token: m[1] }]); }
  }
  function decorate() {
    /* Forms posting to a Loopline form handler and embedded Loopline forms learn this browser's visitor id. */
    var v = visitorId(false);
    if (!v) { return; }
    var forms = d.querySelectorAll("form[action^='" + C.base + "/fh/']");
    for (var i = 0; i < forms.length; i++) {
      if (!forms[i].querySelector("input[name=lp_vid]")) {
        var input = d.createElement("input"); input.type = "hidden"; input.name = "lp_vid"; input.value = v;
        forms[i].appendChild(input);
      }
    }
  }
  function banner() {
    if (!C.consent || !C.banner || noTrack || getCookie(CONSENT) !== null) { return; }
    var box = d.createElement("div");
    box.setAttribute("role", "dialog"); box.setAttribute("aria-label", "Tracking consent");
    box.id = "loopline-consent";
    box.style.cssText = "position:fixed;left:1rem;right:1rem;bottom:1rem;z-index:2147483647;background:#1f2937;" +
      "color:#fff;padding:1rem;border-radius:.5rem;font:15px/1.4 system-ui,sans-serif;display:flex;gap:1rem;" +
      "align-items:center;flex-wrap:wrap;box-shadow:0 4px 20px rgba(0,0,0,.3)";
    var text = d.createElement("span"); text.textContent = C.bannerText; text.style.flex = "1 1 20rem";
    var yes = d.createElement("button"); yes.type = "button"; yes.textContent = "Allow";
    var no = d.createElement("button"); no.type = "button"; no.textContent = "Decline";
    [yes, no].forEach(function (b) { b.style.cssText = "padding:.4rem 1rem;border-radius:.3rem;border:1px solid #fff;" +
      "background:transparent;color:#fff;cursor:pointer;font:inherit"; });
    yes.style.background = "#2563eb"; yes.style.borderColor = "#2563eb";
    yes.onclick = function () { api.consent(true); };
    no.onclick = function () { api.consent(false); };
    box.appendChild(text); box.appendChild(yes); box.appendChild(no);
    (d.body || d.documentElement).appendChild(box);
  }
  var api = {
    consent: function (yes) {
      setCookie(CONSENT, yes ? "1" : "0", YEAR);
      var box = d.getElementById("loopline-consent"); if (box) { box.parentNode.removeChild(box); }
      if (yes) { track(); decorate(); } else { setCookie(COOKIE, "", 0); }
    },
    track: track,
    visitorId: function () { return visitorId(false); }
  };
  w.loopline = w.loopline || {};
  w.loopline[C.bu] = api;
  w.loopline.consent = api.consent;
  w.loopline.visitorId = api.visitorId;
  track();
  identifyFromLink();
  if (d.readyState === "loading") {
    d.addEventListener("DOMContentLoaded", function () { decorate(); banner(); });
  } else { decorate(); banner(); }
})(window, document, navigator);
