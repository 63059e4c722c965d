/* meteremu dashboard: polls /ui/power (every 3 s, every 1 s while training)
 * and /admin/overview (every 6 s) and draws everything by hand: no library,
 * no build step, no network access beyond this server. */
"use strict";
(function () {
  var POLL_MS = 3000, FAST_MS = 1000, HIDDEN_MS = 15000, OVERVIEW_MS = 6000;
  var SVG = "http://www.w3.org/2000/svg";
  var state = { meter: null, span: 3600, data: null, overview: null, overviewAt: 0,
                fast: false, timer: null, metersKey: "" };

  function $(id) { return document.getElementById(id); }
  function text(el, value) { if (el && el.textContent !== value) el.textContent = value; }

  // -- formatting ------------------------------------------------------------------
  function fmtW(w) {
    if (w === null || w === undefined) return "–";
    var a = Math.abs(w);
    if (a >= 10000) return (a / 1000).toFixed(1) + " kW";
    if (a >= 1000) return (a / 1000).toFixed(2) + " kW";
    return Math.round(a) + " W";
  }
  function fmtAxisW(w) {
    var a = Math.abs(w), sign = w < 0 ? "−" : "";
    if (a >= 1000) return sign + (a / 1000).toFixed(a % 1000 === 0 ? 0 : 1) + " kW";
    return sign + Math.round(a) + " W";
  }
  function fmtWh(wh) {
    if (wh === null || wh === undefined) return "–";
    if (wh < 1000) return Math.round(wh) + " Wh";
    return (wh / 1000).toFixed(2) + " kWh";
  }
  function fmtNum(x, digits) {
    if (x === null || x === undefined) return "–";
    return x.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
  }
  function fmtFixed1(x) { return fmtNum(x, 1); }
  function fmtSI(x) {  // 338 023 -> "338k", 1 453 852 -> "1.45M"
    var a = Math.abs(x);
    if (a >= 1e9) return (x / 1e9).toFixed(2) + "G";
    if (a >= 1e6) return (x / 1e6).toFixed(2) + "M";
    if (a >= 1e4) return Math.round(x / 1e3) + "k";
    return fmtNum(x, 0);
  }
  function fmtSpan(s) {
    if (s < 120) return Math.round(s) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    return fmtNum(s / 3600, 1) + " h";
  }
  function fmtAge(s) {
    if (s === null || s === undefined) return "never";
    if (s < 1.5) return "just now";
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 172800) return (s / 3600).toFixed(1) + " h ago";
    return Math.round(s / 86400) + " days ago";
  }
  function pad2(n) { return (n < 10 ? "0" : "") + n; }
  function fmtClock(ts, seconds) {
    var d = new Date(ts * 1000);
    return pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + (seconds ? ":" + pad2(d.getSeconds()) : "");
  }
  function fmtDateTime(ts) {
    var d = new Date(ts * 1000);
    return d.getFullYear() + "-" + pad2(d.getMonth() + 1) + "-" + pad2(d.getDate()) + " " + fmtClock(ts);
  }
  function direction(w) {
    if (w === null || w === undefined) return "none";
    if (w > 0.5) return "import";
    if (w < -0.5) return "export";
    return "none";
  }

  // -- data ------------------------------------------------------------------------
  function powerUrl() {
    var q = "?span=" + state.span;
    if (state.meter) q += "&meter=" + encodeURIComponent(state.meter);
    return "ui/power" + q;
  }

  function getJSON(url) {
    return fetch(url, { cache: "no-store", headers: { "Accept": "application/json" } })
      .then(function (r) {
        return r.json().then(function (body) { return { status: r.status, body: body }; });
      });
  }

  function schedule() {
    clearTimeout(state.timer);
    var ms = document.hidden ? HIDDEN_MS : (state.fast ? FAST_MS : POLL_MS);
    state.timer = setTimeout(tick, ms);
  }

  function tick() {
    var jobs = [getJSON(powerUrl()).then(function (r) {
      $("offline").hidden = true;
      if (r.status === 200) {
        state.data = r.body;
        render(r.body);
      } else if (r.status === 404 && r.body.meters && r.body.meters.length && state.meter) {
        state.meter = null;  // that meter went away: fall back to the first
      }
    })];
    if (Date.now() - state.overviewAt > OVERVIEW_MS) {
      jobs.push(getJSON("admin/overview").then(function (r) {
        state.overviewAt = Date.now();
        state.overview = r.status === 200 ? r.body : null;
        renderClients();
      }));
    }
    Promise.all(jobs).catch(function () { $("offline").hidden = false; }).then(schedule);
  }

  // -- rendering -------------------------------------------------------------------
  function render(d) {
    state.meter = d.meter;
    renderMeters(d);
    renderNow(d);
    renderEnergy(d);
    renderSource(d);
    drawChart(d);
    renderModel(d);
    if (state.overview) renderClients();
    text($("updated"), "updated " + fmtClock(Date.now() / 1000, true));
  }

  function renderMeters(d) {
    var key = d.meters.join("\u0000");
    var wrap = $("meter-select-wrap"), select = $("meter-select");
    wrap.hidden = d.meters.length < 2;
    if (key !== state.metersKey) {
      state.metersKey = key;
      select.textContent = "";
      d.meters.forEach(function (name) {
        var opt = document.createElement("option");
        opt.value = name; opt.textContent = name;
        select.appendChild(opt);
      });
    }
    select.value = d.meter;
    text($("meter-name"), d.meters.length > 1 ? "· " + d.meter : "");
  }

  function renderNow(d) {
    var total = d.power.total, dir = direction(total), hero = $("hero");
    hero.setAttribute("data-dir", dir);
    text($("total-power"), fmtW(total));
    text($("total-dir"), total === null ? "waiting for the first reading"
      : dir === "import" ? "importing from the grid" : dir === "export" ? "exporting to the grid" : "balanced");
    var phases = ["a", "b", "c"], scale = 1000;
    phases.forEach(function (p) { if (d.power[p] !== null) scale = Math.max(scale, Math.abs(d.power[p])); });
    phases.forEach(function (p) {
      var el = $("phase-" + p), w = d.power[p], pdir = direction(w);
      el.setAttribute("data-dir", pdir);
      text(el.querySelector(".phase-value"), fmtW(w));
      text(el.querySelector(".phase-dir"), pdir === "import" ? "import" : pdir === "export" ? "export" : "");
      var fill = el.querySelector(".bar-fill"), pct = w === null ? 0 : Math.min(50, Math.abs(w) / scale * 50);
      fill.style.width = pct + "%";
      fill.style.left = (pdir === "export" ? 50 - pct : 50) + "%";
      var e = d.phases && d.phases[p];
      text(el.querySelector(".phase-elec"), e ? fmtNum(e.voltage, 1) + " V\n" + fmtNum(e.current, 2) + " A\npf " +
        fmtNum(e.pf, 2) : "");
    });
  }

  function renderEnergy(d) {
    var e = d.energy_today;
    text($("energy-day"), e.day ? "· " + e.day : "");
    ["a", "b", "c", "total"].forEach(function (p) {
      var row = document.querySelector('#energy tr[data-phase="' + p + '"]');
      text(row.querySelector(".imp"), fmtWh(e[p].import_wh));
      text(row.querySelector(".exp"), fmtWh(e[p].export_wh));
    });
  }

  function renderSource(d) {
    var h = d.health, pill = $("freshness");
    pill.setAttribute("data-state", h.state);
    text(pill, h.state + (h.age_s !== null ? " · " + fmtAge(h.age_s) : ""));
    var st = $("src-state");
    st.setAttribute("data-state", h.state);
    text(st, h.state);
    text($("src-type"), h.source);
    text($("src-age"), fmtAge(h.age_s));
    text($("src-rate"), h.success_rate === null ? "–"
      : fmtNum(h.success_rate * 100, 1) + " % of " + (h.fetches + h.failures));
    text($("src-error"), h.last_error || "none");
  }

  function renderClients() {
    var box = $("clients"), ov = state.overview;
    box.textContent = "";
    if (!ov || !ov.devices) {
      var p = document.createElement("p");
      p.className = "muted"; p.textContent = "not available";
      box.appendChild(p);
      return;
    }
    var now = state.data ? state.data.server_time : Date.now() / 1000;
    var names = Object.keys(ov.devices);
    if (!names.length) {
      var none = document.createElement("p");
      none.className = "muted"; none.textContent = "no device is configured";
      box.appendChild(none);
    }
    names.forEach(function (name) {
      var dev = ov.devices[name], wrap = document.createElement("div");
      wrap.className = "device";
      var head = document.createElement("div");
      head.className = "device-head";
      var count = document.createElement("span");
      count.className = "count"; count.textContent = String(dev.active_batteries.length);
      head.appendChild(count);
      head.appendChild(document.createTextNode(
        (dev.active_batteries.length === 1 ? "battery polling " : "batteries polling ")));
      var b = document.createElement("b");
      b.textContent = dev.id;
      head.appendChild(b);
      head.appendChild(document.createTextNode(" (meter " + dev.meter + ")"));
      wrap.appendChild(head);
      if (dev.control) wrap.appendChild(renderControl(dev.control, dev.clients));
      if (!dev.clients.length) {
        var empty = document.createElement("div");
        empty.className = "muted small"; empty.textContent = "no client has asked yet";
        wrap.appendChild(empty);
      }
      dev.clients.forEach(function (c) {
        var row = document.createElement("div");
        row.className = "client";
        var ip = document.createElement("span");
        ip.className = "ip"; ip.textContent = c.mac ? c.mac + " · " + c.ip : c.ip;
        var tr = document.createElement("span");
        tr.className = "tag"; tr.textContent = c.transport;
        row.appendChild(ip); row.appendChild(tr);
        if (c.battery) {
          var bat = document.createElement("span");
          bat.className = "tag battery"; bat.textContent = "battery";
          row.appendChild(bat);
        }
        var meta = document.createElement("span");
        meta.className = "meta";
        meta.textContent = fmtAge(Math.max(0, now - c.last_seen)) + " · " +
          (c.requests !== undefined ? c.requests : c.polls) + " req";
        row.appendChild(meta);
        wrap.appendChild(row);
      });
      box.appendChild(wrap);
    });
  }

  var QUALITY = { idle: "idle", stable: "stable", off_target: "off target",
                  limited: "limited: batteries full or empty" };

  function fmtSignedW(w) {
    if (w === null || w === undefined) return "–";
    return (w < 0 ? "−" : "") + fmtW(w);
  }

  // Active control (docs/control.md): the meter's quality and each battery's
  // reported power (+ discharge), target, the value served to it, its share.
  // The controller is one per meter: each device shows the batteries among its
  // own clients (CT clients by MAC, Shelly clients by IP).
  function renderControl(c, clients) {
    var own = {};
    clients.forEach(function (cl) { own[cl.mac || cl.ip] = true; });
    var batteries = c.batteries.filter(function (b) { return own[b.key]; });
    var box = document.createElement("div");
    box.className = "control";
    box.setAttribute("data-quality", c.quality);
    var head = document.createElement("div");
    head.className = "control-head";
    var q = document.createElement("span");
    q.className = "quality"; q.textContent = QUALITY[c.quality] || c.quality;
    head.appendChild(document.createTextNode("active control · "));
    head.appendChild(q);
    if (c.error !== null && c.error !== undefined) {
      head.appendChild(document.createTextNode(" · grid off target by " + fmtSignedW(c.error)));
    }
    box.appendChild(head);
    if (!batteries.length) return box;
    var table = document.createElement("table");
    table.className = "nums batteries";
    var thead = document.createElement("thead"), hr = document.createElement("tr");
    ["battery", "power", "target", "served", "share", "state"].forEach(function (h) {
      var th = document.createElement("th"); th.textContent = h; hr.appendChild(th);
    });
    thead.appendChild(hr); table.appendChild(thead);
    var body = document.createElement("tbody");
    batteries.forEach(function (b) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-key", b.key);
      tr.setAttribute("data-state", b.state);
      [b.key, fmtSignedW(b.power), fmtSignedW(b.target), fmtSignedW(b.served),
       Math.round((b.share || 0) * 100) + " %", b.state].forEach(function (v, i) {
        var td = document.createElement(i === 0 ? "th" : "td"); td.textContent = v; tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    table.appendChild(body);
    box.appendChild(table);
    return box;
  }

  function renderModel(d) {
    var t = d.training, off = !d.forecasting;
    $("model-off").hidden = !off;
    document.querySelector(".model-body").hidden = off;
    var rows = { model: d.model, persistence: d.baselines && d.baselines.persistence,
                 seasonal_naive: d.baselines && d.baselines.seasonal_naive };
    var best = {};
    ["mae", "mse", "mape"].forEach(function (k) {
      Object.keys(rows).forEach(function (r) {
        var v = rows[r] && rows[r][k];
        if (v !== null && v !== undefined && (best[k] === undefined || v < rows[best[k]][k])) best[k] = r;
      });
    });
    Object.keys(rows).forEach(function (r) {
      var row = document.querySelector('#metrics tr[data-row="' + r + '"]'), m = rows[r];
      [["mae", fmtFixed1], ["mse", fmtSI], ["mape", fmtFixed1]].forEach(function (spec) {
        var cell = row.querySelector("." + spec[0]), v = m ? m[spec[0]] : null;
        text(cell, v === null || v === undefined ? "–" : spec[1](v));
        cell.classList.toggle("best", best[spec[0]] === r && !!d.model);
      });
    });
    var skill = $("skill");
    var flat = d.skill === null || Math.abs(d.skill) < 0.005;  // within ±0.5 %: on a par
    skill.setAttribute("data-sign", flat ? "none" : d.skill > 0 ? "good" : "bad");
    text($("skill-value"), d.skill === null ? "–"
      : (d.skill >= 0.0005 ? "+" : d.skill <= -0.0005 ? "−" : "") + fmtNum(Math.abs(d.skill) * 100, 1) + " %");
    var meta = "no model yet";
    if (off) meta = "";
    else if (d.model) {
      var m = d.model, days = m.samples * m.resolution / 86400;
      meta = "Trained " + fmtDateTime(m.trained_at) + " on " + fmtNum(m.samples, 0) + " samples (" +
        (days >= 1 ? fmtNum(days, 1) + " days" : fmtNum(days * 24, 1) + " h") + "). Looks at the last " +
        fmtSpan(m.window * m.resolution) + ", forecasts " + fmtSpan(m.horizon * m.resolution) + " ahead in " +
        m.resolution + " s steps; scored on " + fmtNum(m.test_examples, 0) + " held-out windows.";
    }
    text($("model-meta"), meta);

    var running = t.state === "running";
    state.fast = running;
    var button = $("train-button");
    button.disabled = running || off;
    text(button, running ? "Training…" : "Train now");
    var pct = Math.round((t.progress || 0) * 100);
    $("train-progress-fill").style.width = (running || pct === 100 ? pct : 0) + "%";
    $("train-progress").setAttribute("aria-valuenow", String(pct));
    text($("train-state"), off ? "off" : running ? pct + " %" : "idle");
    var msg = t.last_error ? "last run failed: " + t.last_error : (t.message || "");
    if (t.notes) {
      var notes = t.notes[d.meter];
      if (notes && !d.model) msg = notes;
    }
    if (!running && t.next_run && !off) msg += (msg ? " · " : "") + "next run " + fmtClock(t.next_run);
    text($("train-message"), msg);
  }

  // -- chart -------------------------------------------------------------------------
  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    for (var k in attrs) if (Object.prototype.hasOwnProperty.call(attrs, k)) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceStep(range, count) {
    var raw = range / Math.max(1, count), mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * mag;
  }

  var TIME_STEPS = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800];
  var DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
  function fmtTick(t, step) {
    if (step < 86400) return fmtClock(t);
    var d = new Date(t * 1000);
    return DAYS[d.getDay()] + " " + pad2(d.getDate());
  }

  function drawChart(d) {
    var box = $("chart");
    var w = box.clientWidth || 600, h = box.clientHeight || 260;
    var m = { l: 48, r: 12, t: 14, b: 24 };
    box.textContent = "";
    var svg = el("svg", { viewBox: "0 0 " + w + " " + h, width: w, height: h }, box);
    var hist = d.history || [], fc = d.forecast || [];
    if (!hist.length) {
      el("text", { x: w / 2, y: h / 2, "text-anchor": "middle", "class": "empty" }, svg).textContent =
        "no readings yet";
      text($("chart-note"), "");
      return;
    }
    var t0 = hist[0][0], tNow = hist[hist.length - 1][0];
    var t1 = fc.length ? Math.max(tNow, fc[fc.length - 1][0]) : tNow;
    if (t1 - t0 < 1) t1 = t0 + 1;
    var vmin = 0, vmax = 0;
    hist.concat(fc).forEach(function (p) { vmin = Math.min(vmin, p[1]); vmax = Math.max(vmax, p[1]); });
    if (vmax - vmin < 100) { vmax += 50; vmin -= 50; }
    var step = niceStep(vmax - vmin, h < 240 ? 4 : 5);
    vmin = Math.floor(vmin / step) * step; vmax = Math.ceil(vmax / step) * step;
    var pw = w - m.l - m.r, ph = h - m.t - m.b;
    function x(t) { return m.l + (t - t0) / (t1 - t0) * pw; }
    function y(v) { return m.t + (vmax - v) / (vmax - vmin) * ph; }

    for (var v = vmin; v <= vmax + step / 2; v += step) {
      el("line", { x1: m.l, x2: w - m.r, y1: y(v), y2: y(v), "class": Math.abs(v) < step / 2 ? "zero" : "gridline" }, svg);
      el("text", { x: m.l - 6, y: y(v) + 4, "text-anchor": "end", "class": "axis" }, svg).textContent = fmtAxisW(v);
    }
    var tstep = TIME_STEPS[TIME_STEPS.length - 1];
    for (var i = 0; i < TIME_STEPS.length; i++) {
      if ((t1 - t0) / TIME_STEPS[i] <= Math.max(2, Math.floor(pw / 80))) { tstep = TIME_STEPS[i]; break; }
    }
    var offset = new Date(t0 * 1000).getTimezoneOffset() * 60;
    for (var t = Math.ceil((t0 - offset) / tstep) * tstep + offset; t <= t1; t += tstep) {
      el("line", { x1: x(t), x2: x(t), y1: m.t, y2: h - m.b, "class": "gridline" }, svg);
      el("text", { x: x(t), y: h - 6, "text-anchor": "middle", "class": "axis" }, svg).textContent = fmtTick(t, tstep);
    }

    var defs = el("defs", {}, svg), zero = y(0);
    el("rect", { x: 0, y: 0, width: w, height: Math.max(0, zero) }, el("clipPath", { id: "clip-import" }, defs));
    el("rect", { x: 0, y: zero, width: w, height: Math.max(0, h - zero) }, el("clipPath", { id: "clip-export" }, defs));

    if (fc.length) {
      el("rect", { x: x(tNow), y: m.t, width: Math.max(0, x(t1) - x(tNow)), height: ph, "class": "forecast-zone" }, svg);
    }
    // Backfilled history is the simulator's computed past, not a measurement: shade and label it.
    var backfilled = (d.history_parts || []).filter(function (p) { return p.source === "backfill"; });
    backfilled.forEach(function (p) {
      var a = x(Math.max(t0, p.from)), b = x(Math.min(tNow, p.to));
      if (b <= a) return;
      var zone = el("rect", { x: a, y: m.t, width: b - a, height: ph, "class": "backfill-zone" }, svg);
      el("title", {}, zone).textContent = p.label;
      if (b - a > 90) {
        el("text", { x: a + 4, y: m.t + 10, "class": "backfill-label" }, svg).textContent = "simulated (backfill)";
      }
    });
    $("backfill-key").hidden = $("backfill-legend").hidden = !backfilled.length;
    var line = "", area = "M" + x(hist[0][0]).toFixed(1) + "," + zero.toFixed(1);
    hist.forEach(function (p, k) {
      var pt = x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1);
      line += (k ? "L" : "M") + pt;
      area += "L" + pt;
    });
    area += "L" + x(tNow).toFixed(1) + "," + zero.toFixed(1) + "Z";
    el("path", { d: area, "class": "area-import", "clip-path": "url(#clip-import)" }, svg);
    el("path", { d: area, "class": "area-export", "clip-path": "url(#clip-export)" }, svg);
    el("path", { d: line, "class": "history" }, svg);
    if (fc.length) {
      var last = hist[hist.length - 1], f = "M" + x(last[0]).toFixed(1) + "," + y(last[1]).toFixed(1);
      fc.forEach(function (p) { f += "L" + x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1); });
      el("path", { d: f, "class": "forecast" }, svg);
      el("line", { x1: x(tNow), x2: x(tNow), y1: m.t, y2: h - m.b, "class": "nowline" }, svg);
      el("text", { x: x(tNow) - 4, y: m.t + 10, "text-anchor": "end", "class": "nowlabel" }, svg).textContent = "now";
    }
    var note = fc.length ? "next " + Math.round((fc[fc.length - 1][0] - tNow) / 60) + " min"
      : d.forecasting ? "no forecast yet" : "forecasting off";
    var bf = d.backfill;
    if (bf && bf.state === "running" && bf.planned) {
      note = "computing the simulated past: " + Math.round(100 * bf.written / bf.planned) + " %";
    }
    text($("chart-note"), note);
    attachCursor(box, svg, hist, fc, backfilled, x, y, m, h);
  }

  function attachCursor(box, svg, hist, fc, backfilled, x, y, m, h) {
    function simulated(t) {
      return backfilled.some(function (p) { return p.from <= t && t < p.to; });
    }
    var points = hist.map(function (p) { return [p[0], p[1], false]; })
      .concat(fc.map(function (p) { return [p[0], p[1], true]; }));
    var cursor = el("line", { y1: m.t, y2: h - m.b, "class": "cursor", visibility: "hidden" }, svg);
    var dot = el("circle", { r: 4, "class": "dot", visibility: "hidden" }, svg);
    var tip = document.createElement("div");
    tip.className = "tip"; tip.hidden = true;
    box.appendChild(tip);
    function move(ev) {
      var rect = svg.getBoundingClientRect(), px = ev.clientX - rect.left;
      var best = null, dist = Infinity;
      points.forEach(function (p) { var dd = Math.abs(x(p[0]) - px); if (dd < dist) { dist = dd; best = p; } });
      if (!best) return;
      var cx = x(best[0]), cy = y(best[1]);
      cursor.setAttribute("x1", cx); cursor.setAttribute("x2", cx); cursor.setAttribute("visibility", "visible");
      dot.setAttribute("cx", cx); dot.setAttribute("cy", cy); dot.setAttribute("visibility", "visible");
      tip.hidden = false;
      tip.style.left = cx + "px"; tip.style.top = cy + "px";
      var dir = direction(best[1]);
      tip.textContent = fmtClock(best[0], true) + " · " + fmtW(best[1]) +
        (dir === "none" ? "" : " " + dir) + (best[2] ? " (forecast)" : simulated(best[0]) ? " (simulated)" : "");
    }
    function leave() {
      cursor.setAttribute("visibility", "hidden"); dot.setAttribute("visibility", "hidden"); tip.hidden = true;
    }
    svg.addEventListener("pointermove", move);
    svg.addEventListener("pointerdown", move);
    svg.addEventListener("pointerleave", leave);
  }

  // -- actions -----------------------------------------------------------------------
  function train() {
    var button = $("train-button");
    button.disabled = true;
    fetch("ui/train", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" })
      .then(function (r) { return r.json().then(function (b) { return { status: r.status, body: b }; }); })
      .then(function (r) {
        if (r.status === 202 || r.status === 409) state.fast = true;
        if (r.status !== 202) text($("train-message"), r.body.error || ("HTTP " + r.status));
        if (r.body.training) {
          text($("train-state"), r.body.training.state === "running"
            ? Math.round(r.body.training.progress * 100) + " %" : r.body.training.state);
        }
      })
      .catch(function () { text($("train-message"), "could not reach meteremu"); })
      .then(function () { clearTimeout(state.timer); tick(); });
  }

  function init() {
    $("train-button").addEventListener("click", train);
    $("meter-select").addEventListener("change", function (ev) {
      state.meter = ev.target.value; clearTimeout(state.timer); tick();
    });
    Array.prototype.forEach.call(document.querySelectorAll(".seg button"), function (b) {
      b.addEventListener("click", function () {
        state.span = Number(b.getAttribute("data-span"));
        Array.prototype.forEach.call(document.querySelectorAll(".seg button"), function (o) {
          o.setAttribute("aria-pressed", String(o === b));
        });
        clearTimeout(state.timer); tick();
      });
    });
    var resizeTimer = null;
    window.addEventListener("resize", function () {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(function () { if (state.data) drawChart(state.data); }, 150);
    });
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) { clearTimeout(state.timer); tick(); }
    });
    tick();
  }

  init();
})();
