/* Loopline form embed: inserts the form in an iframe right where this script tag is. */
(function (w, d) {
  "use strict";
  var C = {{ config_json|safe }};
  var me = d.currentScript;
  var m = d.cookie.match(new RegExp("(?:^|; )visitor_id" + C.bu + "=([0-9a-f]{32})"));
  var api = w.loopline && w.loopline[C.bu];
  var vid = api ? api.visitorId() : (m ? m[1] : null);
  var params = "?embed=1" + (vid ? "&vid=" + vid : "");
  var frame = d.createElement("iframe");
  frame.src = C.src + params;
  frame.title = "Form";
  frame.setAttribute("data-loopline-form", C.key);
  frame.style.cssText = "width:100%;border:0;min-height:420px";
  frame.loading = "lazy";
  if (me && me.parentNode) { me.parentNode.insertBefore(frame, me.nextSibling); } else { d.body.appendChild(frame); }
  w.addEventListener("message", function (e) {
    if (e.origin !== C.origin || !e.data || e.data.loopline !== "form-height" || e.data.key !== C.key) { return; }
    frame.style.height = Math.min(Math.max(e.data.height, 200), 5000) + "px";
  });
})(window, document);
