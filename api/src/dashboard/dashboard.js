// nPanel's web dashboard (DESIGN §15): plain ES2020, no build step, nothing from elsewhere.
//
// - The token lives in sessionStorage (this tab only; the keys of the /login page), is sent as
//   `Authorization: Bearer` to /api, and as `?token=` only on the WebSocket upgrade, which
//   browsers cannot give headers (DESIGN §3). It is never put in the address bar.
// - One socket, /api/events/live, feeds every view. After a drop it reconnects with
//   `?since=<last seq>` (backing off up to 10 s) and says so in the header; an event whose seq is
//   not newer than the last one applied is ignored, so nothing is applied twice.
// - A bar never goes backwards: it shows the highest percent received for the job's current
//   attempt. Only a new attempt (a `status: running` event with a higher `attempt`) or a retry
//   (`status: queued`, reason `retry requested`) restarts it from 0: the work starts over.
// - Events only mark jobs dirty; the DOM is touched once per animation frame for all of them.
'use strict';

(function () {
  var S = window.sessionStorage;
  var KEYS = { token: 'npanel.token', role: 'npanel.role', account: 'npanel.account', expires: 'npanel.expires_at' };
  var main = document.getElementById('main');
  var nav = document.getElementById('nav');
  var conn = document.getElementById('conn');
  var who = document.getElementById('who');
  var signoutBtn = document.getElementById('signout');
  var toastEl = document.getElementById('toast');

  var session = null;
  var jobs = new Map();
  var lastSeq = null;
  var sock = null;
  var sockWanted = false;
  var sockFailures = 0;
  var sockTimer = null;
  var view = null;
  var dirty = new Set();
  var frameQueued = false;
  var orderDirty = true;
  var listTimer = null;
  var expiryTimer = null;
  var firstRender = false;

  // For tests and the curious: what the socket applied, in order.
  // flushes/flushMs/flushMaxMs: how many batched DOM updates ran and what they cost.
  var debug = { events: [], snapshots: 0, reconnects: 0, opens: 0, flushes: 0, flushMs: 0, flushMaxMs: 0 };
  window.npanelDebug = debug;

  // ------------------------------------------------------------------------------ helpers

  function h(tag, attrs) {
    var el = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === null || v === undefined || v === false) return;
        if (k === 'text') el.textContent = v;
        else if (k === 'class') el.className = v;
        else if (k.slice(0, 2) === 'on') el.addEventListener(k.slice(2), v);
        else el.setAttribute(k, v === true ? '' : v);
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined || c === false) continue;
      if (Array.isArray(c)) c.forEach(function (x) { if (x) el.appendChild(x); });
      else el.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    }
    return el;
  }

  function setText(el, t) {
    t = String(t);
    if (el.textContent !== t) el.textContent = t;
  }

  function toast(msg, isError) {
    toastEl.textContent = msg;
    toastEl.className = isError ? 'error' : '';
    toastEl.hidden = false;
    clearTimeout(toast.t);
    toast.t = setTimeout(function () { toastEl.hidden = true; }, isError ? 8000 : 3500);
  }

  function fail(e) {
    toast(e && e.message ? e.message : String(e), true);
  }

  function cmpSeq(a, b) {
    var x = String(a).split('-'), y = String(b).split('-');
    return (Number(x[0]) - Number(y[0])) || (Number(x[1] || 0) - Number(y[1] || 0));
  }

  function fmtEta(s) {
    if (s === null || s === undefined || !isFinite(s)) return '—';
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + ' s';
    var m = Math.floor(s / 60), r = s % 60;
    if (m < 60) return m + ' min ' + (r < 10 ? '0' : '') + r + ' s';
    return Math.floor(m / 60) + ' h ' + (m % 60) + ' min';
  }

  // speed_mbps is millions of the stage's units a second: MB/s for bytes. Below 1 KB/s (a
  // stage counting files or steps, or a stall) it says nothing useful.
  function fmtSpeed(v) {
    if (v === null || v === undefined || !isFinite(v) || v < 0.001) return '—';
    if (v < 1) return (v * 1000).toFixed(0) + ' KB/s';
    return (v >= 100 ? v.toFixed(0) : v.toFixed(1)) + ' MB/s';
  }

  function fmtTime(t) {
    if (!t) return '—';
    var d = new Date(t);
    return isNaN(d) ? String(t) : d.toLocaleString();
  }

  function label(k) {
    return String(k).replace(/_/g, ' ');
  }

  function finished(status) {
    return status === 'succeeded' || status === 'failed' || status === 'cancelled';
  }

  function claimsOf(token) {
    var parts = String(token).split('.');
    if (parts.length !== 3) return null;
    try {
      var b = parts[1].replace(/-/g, '+').replace(/_/g, '/');
      while (b.length % 4) b += '=';
      var c = JSON.parse(atob(b));
      return c && typeof c.role === 'string' ? c : null;
    } catch (_) {
      return null;
    }
  }

  function ApiError(status, code, message) {
    this.status = status;
    this.code = code;
    this.message = message;
  }

  function api(method, path, body, quiet401) {
    if (!session) return Promise.reject(new ApiError(401, 'unauthorized', 'You are signed out.'));
    var headers = { Accept: 'application/json', Authorization: 'Bearer ' + session.token };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    return fetch(path, {
      method: method,
      headers: headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
      referrerPolicy: 'no-referrer'
    }).then(function (r) {
      return r.json().catch(function () { return null; }).then(function (data) {
        if (r.ok) return data;
        if (r.status === 401 && !quiet401) signOut('Your session has ended or the token was refused: sign in again.');
        throw new ApiError(r.status, data && data.error, (data && data.message) || 'the server answered HTTP ' + r.status);
      });
    }, function () {
      throw new ApiError(0, 'network', 'nPanel could not be reached: check the connection.');
    });
  }

  // ------------------------------------------------------------------------------ job model

  function model(id) {
    var m = jobs.get(id);
    if (!m) {
      m = { id: id, kind: null, status: null, account: null, attempts: 0, max_attempts: null, created_at: null,
        started_at: null, finished_at: null, percent: 0, shown: 0, stage: null, done: null, total: null,
        speed: null, eta: null, etaAt: 0, error: null, result: null, log: null, logTotal: 0, logPending: null, cancelling: false,
        payload: null };
      jobs.set(id, m);
      orderDirty = true;
      if (jobs.size > MAX_JOBS) prune();
    }
    return m;
  }

  // A page left open for days must not keep every job it ever saw: past MAX_JOBS, the oldest
  // finished ones are forgotten (the lists show at most 200 anyway).
  var MAX_JOBS = 1000;
  function prune() {
    var open = view && view.jobId;
    Array.from(jobs.values())
      .filter(function (m) { return finished(m.status) && m.id !== open; })
      .sort(function (a, b) { return a.id < b.id ? -1 : a.id > b.id ? 1 : 0; })
      .slice(0, jobs.size - MAX_JOBS / 2)
      .forEach(function (m) { jobs.delete(m.id); });
  }

  function setPercent(m, p) {
    if (typeof p !== 'number' || !isFinite(p)) return;
    m.percent = p;
    if (p > m.shown) m.shown = Math.min(100, p);
  }

  function restart(m) {
    m.shown = 0;
    m.percent = 0;
    m.stage = null;
    m.eta = null;
    m.speed = null;
    m.error = null;
    m.result = null;
    m.finished_at = null;
    m.attempts = 0;
  }

  function newAttempt(m, attempt) {
    if (m.attempts >= 1 && attempt > m.attempts) restart(m);
    m.attempts = Math.max(m.attempts, attempt);
  }

  // A job object from the API or a snapshot. `full`: it is authoritative (a snapshot, which
  // comes in order with the events of its socket); otherwise (a REST read) only what is unknown
  // is filled in, because the live events may already be newer than what was read.
  function mergeJob(j, full) {
    var known = jobs.has(j.id);
    var m = model(j.id);
    m.kind = j.kind || m.kind;
    m.account = j.account === undefined ? m.account : j.account;
    m.max_attempts = j.max_attempts || m.max_attempts;
    m.created_at = j.created_at || m.created_at;
    if (j.payload !== undefined) m.payload = j.payload;
    if (full || !known || m.status === null) {
      // A snapshot after a retry the page did not see: the run started over.
      if (known && ((j.attempts || 0) < m.attempts || (finished(m.status) && !finished(j.status)))) restart(m);
      if (j.attempts) newAttempt(m, j.attempts);
      if (m.status !== j.status) orderDirty = true;
      m.status = j.status;
      m.cancelling = !!j.cancel_requested && !finished(j.status);
      m.started_at = j.started_at;
      m.finished_at = j.finished_at;
      setPercent(m, j.progress_percent);
      if (j.status === 'succeeded') m.shown = 100;
      m.stage = j.current_stage;
      m.done = j.bytes_processed;
      m.total = j.bytes_total;
      m.speed = j.speed_mbps;
      m.eta = j.eta_seconds;
      m.etaAt = performance.now();
      m.error = j.error;
      m.result = j.result;
    }
    markDirty(j.id);
    return m;
  }

  function applySnapshot(msg) {
    debug.snapshots += 1;
    if (Array.isArray(msg.jobs)) msg.jobs.forEach(function (j) { mergeJob(j, true); });
    if (msg.job) mergeJob(msg.job, true);
  }

  function applyEvent(e) {
    if (e.type === 'snapshot') {
      applySnapshot(e);
      if (e.seq && (lastSeq === null || cmpSeq(e.seq, lastSeq) > 0)) lastSeq = e.seq;
      return;
    }
    if (!e.seq || !e.job_id) return;
    if (lastSeq !== null && cmpSeq(e.seq, lastSeq) <= 0) return;
    lastSeq = e.seq;
    debug.events.push(e.seq + ' ' + e.job_id + ' ' + e.type);
    if (debug.events.length > 20000) debug.events.splice(0, 10000);
    var known = jobs.has(e.job_id);
    var m = model(e.job_id);
    if (!known || !m.kind) wantList();
    switch (e.type) {
      case 'status':
        if (e.status === 'cancelling') {
          m.cancelling = true;
        } else {
          if (e.status === 'running' && e.attempt) newAttempt(m, e.attempt);
          // A retry asked for by a person runs the job again from its first attempt.
          if (e.status === 'queued' && e.reason === 'retry requested') restart(m);
          if (e.status === 'running' && !m.started_at) m.started_at = new Date().toISOString();
          if (e.status === 'retrying') m.error = e.error || m.error;
          if (m.status !== e.status) orderDirty = true;
          m.status = e.status;
        }
        break;
      case 'progress':
      case 'stage':
        if (!m.status || m.status === 'queued' || m.status === 'retrying') { m.status = 'running'; orderDirty = true; }
        setPercent(m, e.progress_percent);
        if (e.current_stage !== undefined) m.stage = e.current_stage;
        m.done = e.bytes_processed;
        m.total = e.bytes_total;
        m.speed = e.speed_mbps;
        m.eta = e.eta_seconds;
        m.etaAt = performance.now();
        break;
      case 'log':
        if (typeof e.line === 'string') {
          if (m.log) {
            m.log.push(e.line);
            m.logTotal += 1;
            if (m.log.length > 100) m.log.splice(0, m.log.length - 100);
          } else if (m.logPending) {
            m.logPending.push(e.line);
          }
        }
        break;
      case 'complete': {
        var st = e.status || (e.success ? 'succeeded' : /cancel/i.test(e.error || '') ? 'cancelled' : 'failed');
        if (m.status !== st) orderDirty = true;
        m.status = st;
        m.cancelling = false;
        m.finished_at = new Date().toISOString();
        m.eta = null;
        if (e.success) {
          m.shown = 100;
          m.percent = 100;
          m.result = e.summary === undefined ? null : e.summary;
        } else {
          m.error = e.error || m.error;
        }
        break;
      }
      default:
        break;
    }
    markDirty(m.id);
  }

  // Jobs seen in events but not yet described (new ones): one list read at most every 0.8 s,
  // the first at once.
  var listAt = 0;
  function wantList() {
    if (listTimer) return;
    listTimer = setTimeout(function () {
      listTimer = null;
      listAt = performance.now();
      if (!session) return;
      api('GET', '/api/jobs?limit=200').then(function (r) {
        (r.jobs || []).forEach(function (j) { mergeJob(j, false); });
      }).catch(function () {});
    }, performance.now() - listAt > 800 ? 30 : 800);
  }

  // ------------------------------------------------------------------------------ rendering

  function markDirty(id) {
    dirty.add(id);
    if (!frameQueued) {
      frameQueued = true;
      requestAnimationFrame(flush);
    }
  }

  function flush() {
    var t0 = performance.now();
    frameQueued = false;
    var ids = dirty;
    dirty = new Set();
    if (view && view.update) view.update(ids);
    var dt = performance.now() - t0;
    debug.flushes += 1;
    debug.flushMs += dt;
    if (dt > debug.flushMaxMs) debug.flushMaxMs = dt;
    if (!firstRender && view && view.ready) {
      firstRender = true;
      performance.mark('npanel-first-render');
    }
  }

  // ETA counts down between messages: once a second, running jobs with an ETA are redrawn.
  setInterval(function () {
    jobs.forEach(function (m) {
      if (m.status === 'running' && m.eta !== null && m.eta !== undefined) markDirty(m.id);
    });
  }, 1000);

  function etaNow(m) {
    if (m.status !== 'running' || m.eta === null || m.eta === undefined) return null;
    return Math.max(0, m.eta - (performance.now() - m.etaAt) / 1000);
  }

  function bar(big, name) {
    var fill = h('div', { class: 'fill' });
    var el = h('div', { class: big ? 'bar big' : 'bar', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100',
      'aria-valuenow': '0', 'aria-label': name }, fill);
    el.fill = fill;
    el.shown = -1;
    return el;
  }

  function setBar(el, pct, cls) {
    var p = Math.round(pct * 10) / 10;
    if (el.shown !== p) {
      el.shown = p;
      el.fill.style.transform = 'scaleX(' + p / 100 + ')';
      el.setAttribute('aria-valuenow', String(p));
      el.setAttribute('aria-valuetext', p.toFixed(0) + ' %');
    }
    var c = (el.classList.contains('big') ? 'bar big' : 'bar') + (cls ? ' ' + cls : '');
    if (el.className !== c) el.className = c;
  }

  function barClass(m) {
    return m.status === 'succeeded' ? 'ok' : (m.status === 'failed' || m.status === 'cancelled') ? 'bad' : '';
  }

  function statusText(m) {
    if (m.cancelling && !finished(m.status)) return 'cancelling';
    return m.status || '…';
  }

  var ORDER = { running: 0, queued: 1, retrying: 1 };

  function sortedJobs() {
    return Array.from(jobs.values()).sort(function (a, b) {
      var x = ORDER[a.status] === undefined ? 2 : ORDER[a.status];
      var y = ORDER[b.status] === undefined ? 2 : ORDER[b.status];
      return x - y || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0);
    });
  }

  // A table of jobs, keyed rows, updated in place.
  function jobsTable(showAccount) {
    var tbody = h('tbody');
    var empty = h('p', { class: 'muted', text: 'No jobs yet.' });
    var more = h('p', { class: 'muted', hidden: true });
    var rows = new Map();
    var table = h('table', { class: 'jobs' },
      h('caption', { class: 'sr', text: 'Jobs, running first; progress updates live' }),
      h('thead', null, h('tr', null,
        h('th', { scope: 'col', text: 'Job' }),
        showAccount ? h('th', { scope: 'col', class: 'opt', text: 'Account' }) : null,
        h('th', { scope: 'col', text: 'Status' }),
        h('th', { scope: 'col', text: 'Progress' }),
        h('th', { scope: 'col', class: 'opt', text: 'Stage' }),
        h('th', { scope: 'col', class: 'num opt', text: 'Speed' }),
        h('th', { scope: 'col', class: 'num', text: 'ETA' }))),
      tbody);
    var MAX = 200;

    function row(m) {
      var r = rows.get(m.id);
      if (r) return r;
      var link = h('a', { href: '#/jobs/' + encodeURIComponent(m.id) });
      r = {
        tr: h('tr', { 'data-job': m.id }),
        link: link,
        account: showAccount ? h('td', { class: 'opt' }) : null,
        status: h('span', { class: 'status' }),
        bar: bar(false, 'Progress of job ' + m.id),
        pct: h('span', { class: 'muted' }),
        stage: h('td', { class: 'opt' }),
        speed: h('td', { class: 'num opt' }),
        eta: h('td', { class: 'num' })
      };
      r.tr.appendChild(h('td', null, link));
      if (r.account) r.tr.appendChild(r.account);
      r.tr.appendChild(h('td', null, r.status));
      r.tr.appendChild(h('td', null, r.bar, r.pct));
      r.tr.appendChild(r.stage);
      r.tr.appendChild(r.speed);
      r.tr.appendChild(r.eta);
      rows.set(m.id, r);
      return r;
    }

    function fill(m) {
      var r = row(m);
      setText(r.link, (m.kind || 'job') + ' ' + m.id.slice(-8));
      if (r.account) setText(r.account, m.account || '—');
      var st = statusText(m);
      setText(r.status, st);
      var cls = 'status ' + st;
      if (r.status.className !== cls) r.status.className = cls;
      setBar(r.bar, m.shown, barClass(m));
      setText(r.pct, ' ' + m.shown.toFixed(0) + ' %');
      setText(r.stage, m.stage || '—');
      setText(r.speed, m.status === 'running' ? fmtSpeed(m.speed) : '—');
      setText(r.eta, fmtEta(etaNow(m)));
      if (r.tr.getAttribute('data-status') !== st) r.tr.setAttribute('data-status', st);
      var ps = String(m.shown);
      if (r.tr.getAttribute('data-percent') !== ps) r.tr.setAttribute('data-percent', ps);
    }

    function update(ids) {
      if (orderDirty) {
        orderDirty = false;
        var list = sortedJobs();
        var shown = list.slice(0, MAX);
        var keep = new Set();
        var frag = document.createDocumentFragment();
        shown.forEach(function (m) {
          keep.add(m.id);
          var r = row(m);
          fill(m);
          frag.appendChild(r.tr);
        });
        rows.forEach(function (r, id) { if (!keep.has(id)) { rows.delete(id); } });
        tbody.textContent = '';
        tbody.appendChild(frag);
        empty.hidden = list.length > 0;
        more.hidden = list.length <= MAX;
        more.textContent = (list.length - MAX) + ' older jobs are not shown.';
        return;
      }
      ids.forEach(function (id) {
        var m = jobs.get(id);
        if (m && rows.has(id)) fill(m);
      });
    }

    return { el: h('div', null, h('div', { class: 'scroll' }, table), empty, more), update: update };
  }

  // ------------------------------------------------------------------------------ the socket

  function setConn(text, cls) {
    setText(conn, text);
    conn.className = 'conn ' + (cls || '');
  }

  function connect() {
    sockWanted = true;
    clearTimeout(sockTimer);
    var url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/api/events/live?token=' +
      encodeURIComponent(session.token) + (lastSeq ? '&since=' + encodeURIComponent(lastSeq) : '');
    var s = new WebSocket(url);
    sock = s;
    var opened = false;
    s.onopen = function () {
      if (sock !== s) return;
      opened = true;
      sockFailures = 0;
      debug.opens += 1;
      setConn('Live', 'live');
    };
    s.onmessage = function (ev) {
      if (sock !== s) return;
      var msg;
      try { msg = JSON.parse(ev.data); } catch (_) { return; }
      applyEvent(msg);
    };
    s.onerror = function () {};
    s.onclose = function () {
      if (sock !== s) return;
      sock = null;
      if (!sockWanted) return;
      if (!opened) sockFailures += 1;
      debug.reconnects += 1;
      var delay = Math.min(10000, 500 * Math.pow(2, Math.min(sockFailures, 5))) + Math.random() * 250;
      setConn('Connection lost: reconnecting in ' + Math.ceil(delay / 1000) + ' s…', 'down');
      if (sockFailures >= 3) {
        // Perhaps the token expired: a plain request says so (and signs out on 401).
        api('GET', '/api/jobs?limit=1').catch(function () {});
      }
      sockTimer = setTimeout(function () {
        if (!sockWanted) return;
        setConn('Reconnecting…', 'down');
        connect();
      }, delay);
    };
  }

  function disconnect() {
    sockWanted = false;
    clearTimeout(sockTimer);
    if (sock) {
      var s = sock;
      sock = null;
      if (s.readyState === WebSocket.OPEN) s.close(1000, 'signed out');
    }
  }

  // ------------------------------------------------------------------------------ views

  function isAdmin() { return session && session.role === 'admin'; }

  function heading(text) {
    return h('h1', { tabindex: '-1', text: text });
  }

  function queueView() {
    var q = {
      pending: h('dd', { text: '–' }), max: h('dd', { text: '–' }), state: h('dd', null, h('span', { class: 'badge', text: '–' })),
      meter: bar(false, 'Pending jobs against the bound'),
      pause: h('button', { type: 'button', id: 'pause', text: 'Pause claiming' }),
      kinds: h('tbody', { id: 'kinds' })
    };
    q.meter.classList.add('meter');
    var table = jobsTable(true);
    var data = null;
    var editing = {};
    var timer = null;

    function render(stats) {
      data = stats;
      setText(q.pending, stats.pending);
      setText(q.max, stats.max_pending);
      var badge = q.state.firstChild;
      setText(badge, stats.paused ? 'paused' : 'claiming');
      badge.className = stats.paused ? 'badge paused' : 'badge';
      setBar(q.meter, Math.min(100, 100 * stats.pending / Math.max(1, stats.max_pending)), '');
      q.meter.setAttribute('aria-valuetext', stats.pending + ' of ' + stats.max_pending);
      setText(q.pause, stats.paused ? 'Resume claiming' : 'Pause claiming');
      q.pause.setAttribute('data-paused', stats.paused ? 'true' : 'false');
      var kinds = Object.keys(stats.kinds || {}).sort();
      kinds.forEach(function (k) {
        var s = stats.kinds[k];
        var r = q.kinds.querySelector('tr[data-kind="' + k + '"]');
        if (!r) {
          var input = h('input', { type: 'number', min: '0', max: '10000', step: '1', id: 'limit-' + k, name: 'limit', required: true,
            oninput: function () { editing[k] = true; } });
          var form = h('form', { class: 'inline', 'data-kind': k, onsubmit: function (ev) { ev.preventDefault(); setLimit(k, input); } },
            h('label', { class: 'sr', for: 'limit-' + k, text: 'Concurrency limit for ' + k }), input,
            h('button', { type: 'submit', class: 'secondary', text: 'Set' }));
          r = h('tr', { 'data-kind': k },
            h('th', { scope: 'row', text: k }),
            h('td', { class: 'num running' }), h('td', { class: 'num pending' }), h('td', null, form));
          q.kinds.appendChild(r);
        }
        setText(r.querySelector('.running'), s.running);
        setText(r.querySelector('.pending'), s.pending);
        var inp = r.querySelector('input');
        if (!editing[k] && document.activeElement !== inp) inp.value = String(s.limit);
        r.setAttribute('data-limit', String(s.limit));
      });
    }

    function load() {
      return api('GET', '/api/admin/queue').then(render);
    }

    function setLimit(kind, input) {
      var n = Number(input.value);
      if (!Number.isInteger(n) || n < 0) { toast('The limit must be a whole number, 0 or more.', true); input.focus(); return; }
      api('PUT', '/api/admin/concurrency/' + encodeURIComponent(kind), { limit: n }).then(function () {
        editing[kind] = false;
        toast('Limit for ' + kind + ' set to ' + n + '.');
        return load();
      }).catch(fail);
    }

    q.pause.addEventListener('click', function () {
      var paused = data && data.paused;
      q.pause.disabled = true;
      api('POST', paused ? '/api/admin/queue/resume' : '/api/admin/queue/pause').then(function () {
        toast(paused ? 'Claiming resumed.' : 'Claiming paused: running jobs go on, no new ones start.');
        return load();
      }).catch(fail).then(function () { q.pause.disabled = false; });
    });

    var el = h('div', null, heading('Queue'),
      h('div', { class: 'grid' },
        h('section', { 'aria-labelledby': 'queue-h' }, h('h2', { id: 'queue-h', text: 'Waiting work' }),
          h('dl', { class: 'stats' },
            h('div', null, h('dt', { text: 'Pending' }), q.pending),
            h('div', null, h('dt', { text: 'Bound' }), q.max),
            h('div', null, h('dt', { text: 'State' }), q.state)),
          q.meter,
          h('div', { class: 'actions' }, q.pause)),
        h('section', { 'aria-labelledby': 'kinds-h' }, h('h2', { id: 'kinds-h', text: 'Job types' }),
          h('div', { class: 'scroll' }, h('table', null,
            h('thead', null, h('tr', null, h('th', { scope: 'col', text: 'Type' }), h('th', { scope: 'col', class: 'num', text: 'Running' }),
              h('th', { scope: 'col', class: 'num', text: 'Pending' }), h('th', { scope: 'col', text: 'Limit' }))),
            q.kinds)))),
      h('section', { 'aria-labelledby': 'live-h' }, h('h2', { id: 'live-h', text: 'Jobs' }), table.el));

    var v = {
      el: el,
      ready: false,
      update: table.update,
      start: function () {
        load().then(function () { v.ready = true; markDirty(''); }).catch(fail);
        timer = setInterval(function () { load().catch(function () {}); }, 2000);
      },
      stop: function () { clearInterval(timer); }
    };
    return v;
  }

  // ------------------------------------------------------------------------------ health reports
  //
  // A restore queues a `health_check` job whose payload names it (`migration_id`); its result is
  // the report. They are read from the jobs this page already has, so a build without health
  // checks shows "not available" without a failing request.

  function healthOf(migrationId) {
    var found = null;
    jobs.forEach(function (j) {
      if (j.kind === 'health_check' && j.payload && j.payload.migration_id === migrationId && (!found || j.id > found.id)) found = j;
    });
    return found;
  }

  function healthReport(r) {
    if (!r || typeof r !== 'object') return h('p', { class: 'muted', text: 'The report is empty.' });
    var out = h('div', { class: 'health' });
    out.appendChild(h('p', { class: 'score' }, h('strong', { text: 'Score ' + (r.score === null || r.score === undefined ? '—' : r.score) + ' / 100' }),
      r.grade ? ', grade ' + r.grade : ''));
    var cats = r.categories && typeof r.categories === 'object' ? r.categories : {};
    var names = Object.keys(cats);
    if (names.length) {
      out.appendChild(h('div', { class: 'scroll' }, h('table', null,
        h('caption', { class: 'sr', text: 'Categories' }),
        h('thead', null, h('tr', null, ['Category', 'Points', 'Score', 'Status'].map(function (t) { return h('th', { scope: 'col', text: t }); }))),
        h('tbody', null, names.map(function (n) {
          var c = cats[n] || {};
          return h('tr', null, h('th', { scope: 'row', text: label(n) }), h('td', { class: 'num', text: c.points === undefined ? '—' : String(c.points) }),
            h('td', { class: 'num', text: c.score === null || c.score === undefined ? '—' : String(c.score) }),
            h('td', { class: 'status ' + (c.status === 'pass' ? 'succeeded' : c.status === 'skipped' ? '' : 'failed'), text: c.status || '—' }));
        })))));
    }
    var issues = Array.isArray(r.issues) ? r.issues : [];
    out.appendChild(h('h3', { text: 'Issues' }));
    out.appendChild(issues.length ? h('ul', null, issues.map(function (i) {
      return h('li', { text: '[' + (i.severity || 'issue') + '] ' + [i.category, i.check].filter(Boolean).join(' / ') + ': ' + (i.message || '') });
    })) : h('p', { class: 'muted', text: 'None.' }));
    var steps = Array.isArray(r.next_steps) ? r.next_steps : [];
    if (steps.length) {
      out.appendChild(h('h3', { text: 'Next steps' }));
      out.appendChild(h('ul', null, steps.map(function (x) { return h('li', { text: String(x) }); })));
    }
    return out;
  }

  function healthStatus(hc) {
    if (!hc) return h('p', { class: 'muted', text: 'No health report for this restore: post-migration health checks are not available in this build.' });
    var link = h('a', { href: '#/jobs/' + encodeURIComponent(hc.id), text: 'the health check' });
    if (hc.status === 'succeeded') return healthReport(hc.result);
    if (hc.status === 'failed' || hc.status === 'cancelled') return h('p', { class: 'error' }, 'The health check ' + hc.status + ': ' + (hc.error || 'no reason given') + ' (', link, ').');
    if (hc.status === 'running') return h('p', null, 'Checking the restored account… (', link, ')');
    return h('p', { class: 'muted' }, 'A health check will run shortly after the restore (', link, ').');
  }

  function myJobsView() {
    var table = jobsTable(session.role !== 'customer');
    var reports = h('div', { id: 'health-list' });
    var healthKey = null;
    function drawReports() {
      var hs = Array.from(jobs.values()).filter(function (j) { return j.kind === 'health_check'; })
        .sort(function (a, b) { return a.id < b.id ? 1 : -1; });
      var key = hs.map(function (j) { return j.id + j.status; }).join();
      if (key === healthKey) return;
      healthKey = key;
      reports.textContent = '';
      if (!hs.length) {
        reports.appendChild(h('p', { class: 'muted', id: 'health-na', text: 'No health reports: a report appears here after a restore where this build runs health checks.' }));
        return;
      }
      reports.appendChild(h('ul', null, hs.map(function (j) {
        var r = j.result || {};
        var what = j.status === 'succeeded' ? 'score ' + r.score + (r.grade ? ' (grade ' + r.grade + ')' : '') : j.status || '…';
        return h('li', null, h('a', { href: '#/jobs/' + encodeURIComponent(j.id), text: 'Restore ' + ((j.payload && j.payload.migration_id) || j.id) }), ': ' + what);
      })));
    }
    var el = h('div', null, heading(session.role === 'customer' ? 'Your jobs' : 'Jobs'),
      h('section', { 'aria-labelledby': 'jobs-h' }, h('h2', { id: 'jobs-h', class: 'sr', text: 'Jobs' }), table.el),
      session.role === 'customer' ? h('section', { 'aria-labelledby': 'health-h' }, h('h2', { id: 'health-h', text: 'Health reports' }), reports) : null);
    return { el: el, ready: true, update: function (ids) { table.update(ids); if (session.role === 'customer') drawReports(); } };
  }

  // The seed's restore summary first, in its order; then whatever else the job reported.
  var SUMMARY_FIRST = ['total_time', 'data_restored', 'accounts_created', 'files', 'databases', 'mailboxes', 'skipped'];

  function itemText(x) {
    if (x === null || typeof x !== 'object') return String(x);
    if (x.what !== undefined) return String(x.what) + (x.reason ? ': ' + x.reason : '');
    if (x.path !== undefined) return String(x.path) + (x.reason ? ': ' + x.reason : '');
    return JSON.stringify(x);
  }

  function summaryList(obj) {
    var dl = h('dl', { class: 'summary' });
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
      dl.appendChild(h('dt', { text: 'result' }));
      dl.appendChild(h('dd', { text: obj === null || obj === undefined ? '—' : JSON.stringify(obj) }));
      return dl;
    }
    var keys = SUMMARY_FIRST.filter(function (k) { return k in obj; })
      .concat(Object.keys(obj).filter(function (k) { return SUMMARY_FIRST.indexOf(k) < 0 && !/_human$/.test(k); }));
    keys.forEach(function (k) {
      var v = obj[k];
      var dd = h('dd', { 'data-key': k });
      if (Array.isArray(v)) {
        if (!v.length) dd.textContent = 'none';
        else dd.appendChild(h('ul', null, v.map(function (x) { return h('li', { text: itemText(x) }); })));
      } else if (typeof obj[k + '_human'] === 'string') {
        dd.textContent = obj[k + '_human'];
      } else if (k === 'total_time' && typeof v === 'number') {
        dd.textContent = v < 60 ? v.toFixed(1) + ' s' : fmtEta(v);
      } else {
        dd.textContent = v !== null && typeof v === 'object' ? JSON.stringify(v) : v === null ? '—'
          : typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(2) : String(v);
      }
      dl.appendChild(h('dt', { text: label(k) }));
      dl.appendChild(dd);
    });
    return dl;
  }

  function jobView(id) {
    var f = {
      title: heading('Job ' + id),
      bar: bar(true, 'Progress'),
      status: h('dd', { id: 'job-status', class: 'status', text: '…' }),
      stage: h('dd', { id: 'job-stage', text: '—' }),
      pct: h('dd', { id: 'job-percent', text: '—' }),
      speed: h('dd', { id: 'job-speed', text: '—' }),
      eta: h('dd', { id: 'job-eta', text: '—' }),
      attempt: h('dd', { id: 'job-attempt', text: '—' }),
      account: h('dd', { id: 'job-account', text: '—' }),
      log: h('pre', { class: 'log', id: 'job-log', tabindex: '0', 'aria-label': 'Log tail' }),
      error: h('p', { class: 'error', id: 'job-error', hidden: true }),
      summary: h('section', { id: 'job-summary', 'aria-labelledby': 'sum-h', hidden: true }),
      cancel: h('button', { type: 'button', class: 'danger', id: 'job-cancel', text: 'Cancel' }),
      retry: h('button', { type: 'button', class: 'secondary', id: 'job-retry', text: 'Retry' })
    };
    var logShown = 0;
    var summaryFor = undefined;
    var loaded = false;
    var m = jobs.get(id);
    var actions = h('div', { class: 'actions' }, f.cancel, f.retry);
    if (!isAdmin()) actions.hidden = true;
    var body = h('div', { id: 'job-body', hidden: true },
      h('section', { 'aria-labelledby': 'prog-h' }, h('h2', { id: 'prog-h', class: 'sr', text: 'Progress' }),
        f.bar,
        h('dl', { class: 'stats' },
          h('div', null, h('dt', { text: 'Status' }), f.status),
          h('div', null, h('dt', { text: 'Stage' }), f.stage),
          h('div', null, h('dt', { text: 'Done' }), f.pct),
          h('div', null, h('dt', { text: 'Speed' }), f.speed),
          h('div', null, h('dt', { text: 'Time left' }), f.eta),
          h('div', null, h('dt', { text: 'Attempt' }), f.attempt),
          h('div', null, h('dt', { text: 'Account' }), f.account)),
        f.error, actions),
      f.summary,
      h('section', { 'aria-labelledby': 'log-h' }, h('h2', { id: 'log-h', text: 'Log' }), f.log));
    var health = h('section', { id: 'job-health', 'aria-labelledby': 'jh-h', hidden: true });
    var missing = h('p', { id: 'job-missing', class: 'error', hidden: true });
    var el = h('div', null, h('p', null, h('a', { href: '#/', text: '← All jobs' })), f.title, missing, body, health);

    function act(path, what) {
      f.cancel.disabled = f.retry.disabled = true;
      api('POST', '/api/jobs/' + encodeURIComponent(id) + path).then(function () {
        toast(what);
      }).catch(fail).then(function () { draw(); });
    }
    f.cancel.addEventListener('click', function () { act('/cancel', 'Cancel requested.'); });
    f.retry.addEventListener('click', function () { act('/retry', 'The job is queued again.'); });

    function draw() {
      m = jobs.get(id);
      if (!m || !loaded) return;
      var titles = { restore: 'Restore', backup: 'Backup', diagnostic: 'Diagnostic job', provision: 'Provisioning', upgrade: 'Upgrade',
        health_check: 'Health check', quota_sweep: 'Quota sweep' };
      setText(f.title, (titles[m.kind] || 'Job') + ' ' + id);
      setBar(f.bar, m.shown, barClass(m));
      var st = statusText(m);
      setText(f.status, st);
      f.status.className = 'status ' + st;
      setText(f.stage, m.stage || '—');
      setText(f.pct, m.shown.toFixed(1) + ' %');
      setText(f.speed, m.status === 'running' ? fmtSpeed(m.speed) : '—');
      setText(f.eta, fmtEta(etaNow(m)));
      setText(f.attempt, m.attempts ? m.attempts + (m.max_attempts ? ' of ' + m.max_attempts : '') : '—');
      setText(f.account, m.account || '—');
      f.error.hidden = !m.error || m.status === 'succeeded';
      setText(f.error, m.error ? 'Error: ' + m.error : '');
      f.cancel.disabled = finished(m.status) || m.cancelling;
      f.retry.disabled = !(m.status === 'failed' || m.status === 'cancelled');
      if (m.log) {
        // Lines are counted, not just kept: the tail holds 100, and new ones push old ones out.
        var fresh = m.logTotal - logShown;
        if (fresh > 0) {
          var near = f.log.scrollHeight - f.log.scrollTop - f.log.clientHeight < 40;
          if (fresh >= m.log.length || f.log.childNodes.length > 50) f.log.textContent = m.log.join('\n') + '\n';
          else f.log.appendChild(document.createTextNode(m.log.slice(m.log.length - fresh).join('\n') + '\n'));
          logShown = m.logTotal;
          if (near) f.log.scrollTop = f.log.scrollHeight;
        }
        if (!m.log.length && !f.log.textContent) f.log.textContent = '(no log lines yet)';
      }
      if (m.status === 'succeeded' && m.result !== summaryFor) {
        summaryFor = m.result;
        f.summary.textContent = '';
        f.summary.appendChild(h('h2', { id: 'sum-h', text: m.kind === 'health_check' ? 'Health report' : 'Summary' }));
        f.summary.appendChild(m.kind === 'health_check' ? healthReport(m.result) : summaryList(m.result));
        f.summary.hidden = false;
      }
      drawHealth();
    }

    // A restore's post-migration health check, once one exists for it (DESIGN §12).
    var healthKey = '';
    function drawHealth() {
      if (m.kind !== 'restore') { health.hidden = true; return; }
      var hc = healthOf(id);
      var key = hc ? hc.id + ' ' + hc.status + ' ' + (hc.result ? 'r' : '') : 'none';
      health.hidden = false;
      if (key === healthKey) return;
      healthKey = key;
      health.textContent = '';
      health.appendChild(h('h2', { id: 'jh-h', text: 'Health report' }));
      health.appendChild(healthStatus(hc));
    }

    function load() {
      var mm = model(id);
      if (!mm.log) mm.logPending = [];
      return api('GET', '/api/jobs/' + encodeURIComponent(id)).then(function (j) {
        var m2 = mergeJob(j, false);
        if (m2.result === null && j.result !== undefined) m2.result = j.result;
        if (!m2.error && j.error) m2.error = j.error;
        if (!m2.stage && j.current_stage) m2.stage = j.current_stage;
        // Lines that arrived while the job was read: keep those the tail does not hold yet.
        var tail = (j.log_tail || []).slice(-100);
        var pending = m2.logPending || [];
        m2.log = tail.concat(pending.filter(function (l) { return tail.indexOf(l) < 0; })).slice(-100);
        m2.logTotal = m2.log.length;
        m2.logPending = null;
        loaded = true;
        body.hidden = false;
        v.ready = true;
        markDirty(id);
      }, function (e) {
        var mm2 = jobs.get(id);
        if (mm2) mm2.logPending = null;
        if (e.status === 404) {
          // A job this viewer may not see looks exactly like a missing one.
          if (mm2 && !mm2.kind) { jobs.delete(id); orderDirty = true; }
          setText(f.title, 'Job not found');
          setText(missing, 'There is no job ' + id + ' that you can see.');
          missing.hidden = false;
          v.ready = true;
          markDirty(id);
        } else {
          fail(e);
        }
      });
    }

    var v = {
      el: el,
      jobId: id,
      ready: false,
      update: function (ids) {
        var again = ids.has(id);
        ids.forEach(function (x) { var j = jobs.get(x); if (j && j.kind === 'health_check') again = true; });
        if (again) draw();
      },
      start: function () { load(); },
      stop: function () { var mm = jobs.get(id); if (mm) mm.logPending = null; }
    };
    return v;
  }

  function auditView() {
    var form = h('form', { class: 'filters', id: 'audit-form', role: 'search', 'aria-label': 'Search the audit log' });
    function field(name, text, type, extra) {
      var input = h('input', Object.assign({ type: type || 'text', id: 'audit-' + name, name: name }, extra || {}));
      form.appendChild(h('label', { for: 'audit-' + name }, text, input));
    }
    field('q', 'Text');
    field('action', 'Action (prefix)', 'text', { placeholder: 'account_' });
    field('account', 'Account');
    field('actor', 'Actor id');
    var result = h('select', { id: 'audit-result', name: 'result' }, h('option', { value: '', text: 'any' }),
      h('option', { value: 'success', text: 'success' }), h('option', { value: 'failure', text: 'failure' }),
      h('option', { value: 'denied', text: 'denied' }));
    form.appendChild(h('label', { for: 'audit-result' }, 'Result', result));
    field('from', 'From', 'datetime-local');
    field('to', 'To', 'datetime-local');
    form.appendChild(h('div', null, h('button', { type: 'submit', text: 'Search' })));
    var tbody = h('tbody', { id: 'audit-rows' });
    var status = h('p', { class: 'muted', role: 'status', id: 'audit-status' });
    var moreBtn = h('button', { type: 'button', class: 'secondary', hidden: true, text: 'Load more' });
    var cursor = null;
    var query = '';

    function params() {
      var p = new URLSearchParams();
      ['q', 'action', 'account', 'actor'].forEach(function (k) {
        var val = form.elements[k].value.trim();
        if (val) p.set(k, val);
      });
      if (result.value) p.set('result', result.value);
      ['from', 'to'].forEach(function (k) {
        var val = form.elements[k].value;
        if (val) { var d = new Date(val); if (!isNaN(d)) p.set(k, d.toISOString()); }
      });
      p.set('limit', '50');
      return p;
    }

    function rowOf(r) {
      var rec = r.record || r;
      var actor = rec.actor ? rec.actor.type + ':' + rec.actor.id : '—';
      var res = rec.resource ? [rec.resource.type, rec.resource.id].filter(Boolean).join(' ') : '—';
      var detail = h('details', null, h('summary', { text: 'Details' }), h('pre', { class: 'log', text: JSON.stringify(rec, null, 2) }));
      return h('tr', { 'data-action': rec.action },
        h('td', { text: fmtTime(rec.timestamp) }), h('td', { text: rec.action }), h('td', { text: actor }),
        h('td', { text: rec.account || '—' }), h('td', { text: res }),
        h('td', { class: 'status ' + (rec.result === 'success' ? 'succeeded' : 'failed'), text: rec.result }),
        h('td', null, detail));
    }

    function run(append) {
      var p = append ? new URLSearchParams(query) : params();
      if (!append) query = p.toString();
      if (append && cursor) p.set('cursor', cursor);
      setText(status, 'Searching…');
      return api('GET', '/api/audit?' + p.toString()).then(function (page) {
        if (!append) tbody.textContent = '';
        var frag = document.createDocumentFragment();
        (page.records || []).forEach(function (r) { frag.appendChild(rowOf(r)); });
        tbody.appendChild(frag);
        cursor = page.next_cursor;
        moreBtn.hidden = !cursor;
        setText(status, tbody.childNodes.length ? tbody.childNodes.length + ' records' + (cursor ? ' (more below)' : '') : 'No records match.');
        v.ready = true;
        markDirty('');
      }).catch(function (e) { setText(status, ''); fail(e); });
    }

    form.addEventListener('submit', function (ev) { ev.preventDefault(); run(false); });
    moreBtn.addEventListener('click', function () { run(true); });
    var el = h('div', null, heading('Audit log'), h('section', null, form),
      h('section', { 'aria-labelledby': 'audit-h' }, h('h2', { id: 'audit-h', text: 'Records' }), status,
        h('div', { class: 'scroll' }, h('table', null,
          h('thead', null, h('tr', null, ['Time', 'Action', 'Actor', 'Account', 'Resource', 'Result', ''].map(function (t) {
            return h('th', { scope: 'col', text: t });
          }))), tbody)), moreBtn));
    var v = { el: el, ready: false, start: function () { run(false); } };
    return v;
  }

  function accountsView() {
    var tbody = h('tbody', { id: 'account-rows' });
    var status = h('p', { class: 'muted', role: 'status' });
    var sel = h('select', { id: 'acct-status' }, h('option', { value: '', text: 'any' }),
      ['pending', 'active', 'suspended', 'terminated'].map(function (s) { return h('option', { value: s, text: s }); }));
    var moreBtn = h('button', { type: 'button', class: 'secondary', hidden: true, text: 'Load more' });
    var cursor = null;

    function run(append) {
      var p = new URLSearchParams({ limit: '100' });
      if (sel.value) p.set('status', sel.value);
      if (append && cursor) p.set('cursor', cursor);
      return api('GET', '/api/accounts?' + p.toString()).then(function (page) {
        if (!append) tbody.textContent = '';
        var frag = document.createDocumentFragment();
        (page.accounts || []).forEach(function (a) {
          frag.appendChild(h('tr', { 'data-account': a.id },
            h('th', { scope: 'row', text: a.id }), h('td', { text: a.type }), h('td', { text: a.parent || '—' }),
            h('td', { text: a.package || '—' }), h('td', { class: 'status', text: a.status }), h('td', { text: a.domain || '—' }),
            h('td', { class: 'opt', text: a.email || '—' }), h('td', { class: 'opt', text: fmtTime(a.created_at) })));
        });
        tbody.appendChild(frag);
        cursor = page.next_cursor;
        moreBtn.hidden = !cursor;
        setText(status, tbody.childNodes.length ? tbody.childNodes.length + ' accounts' : 'No accounts.');
        v.ready = true;
        markDirty('');
      }).catch(fail);
    }

    sel.addEventListener('change', function () { run(false); });
    moreBtn.addEventListener('click', function () { run(true); });
    var el = h('div', null, heading('Accounts'),
      h('section', null, h('form', { class: 'inline', onsubmit: function (ev) { ev.preventDefault(); run(false); } },
        h('label', { for: 'acct-status', text: 'Status' }), sel)),
      h('section', { 'aria-labelledby': 'acct-h' }, h('h2', { id: 'acct-h', class: 'sr', text: 'Accounts' }), status,
        h('div', { class: 'scroll' }, h('table', null,
          h('thead', null, h('tr', null, ['Id', 'Type', 'Parent', 'Package', 'Status', 'Domain', 'Email', 'Created'].map(function (t, i) {
            return h('th', { scope: 'col', class: i >= 6 ? 'opt' : null, text: t });
          }))), tbody)), moreBtn));
    var v = { el: el, ready: false, start: function () { run(false); } };
    return v;
  }

  // ------------------------------------------------------------------------------ routing

  function links() {
    var l = [['#/', isAdmin() ? 'Queue' : 'Jobs']];
    if (session.role !== 'customer') {
      l.push(['#/accounts', 'Accounts']);
      l.push(['#/audit', 'Audit']);
    }
    return l;
  }

  function route() {
    if (!session) return;
    var path = (location.hash || '#/').slice(1);
    // Only `#/...` addresses are views; another fragment is an anchor on the current one.
    if (path && path[0] !== '/' && view) return;
    var next;
    var m = /^\/jobs\/([A-Za-z0-9_-]{1,64})$/.exec(path);
    var current = '#/';
    if (m) {
      next = jobView(m[1]);
    } else if (path === '/audit' && session.role !== 'customer') {
      next = auditView();
      current = '#/audit';
    } else if (path === '/accounts' && session.role !== 'customer') {
      next = accountsView();
      current = '#/accounts';
    } else {
      next = isAdmin() ? queueView() : myJobsView();
    }
    if (view && view.stop) view.stop();
    view = next;
    nav.textContent = '';
    links().forEach(function (x) {
      nav.appendChild(h('a', { href: x[0], 'aria-current': x[0] === current ? 'page' : null, text: x[1] }));
    });
    nav.hidden = false;
    main.textContent = '';
    main.appendChild(view.el);
    var h1 = main.querySelector('h1');
    if (route.moved && h1) h1.focus();
    route.moved = true;
    orderDirty = true;
    if (view.start) view.start();
    markDirty('');
  }

  // ------------------------------------------------------------------------------ session

  function signOut(message) {
    disconnect();
    [KEYS.token, KEYS.role, KEYS.account, KEYS.expires].forEach(function (k) { S.removeItem(k); });
    session = null;
    clearTimeout(expiryTimer);
    if (view && view.stop) view.stop();
    view = null;
    jobs.clear();
    lastSeq = null;
    signInView(message);
  }

  function begin(token) {
    var c = claimsOf(token) || {};
    session = {
      token: token,
      role: S.getItem(KEYS.role) || c.role,
      account: S.getItem(KEYS.account) || c.account || null,
      sub: c.sub || ''
    };
    var exp = Number(S.getItem(KEYS.expires)) || (c.exp ? c.exp * 1000 : 0);
    if (exp) {
      if (exp <= Date.now()) { signOut('Your session has expired: sign in again.'); return; }
      expiryTimer = setTimeout(function () { signOut('Your session has expired: sign in again.'); }, Math.min(exp - Date.now(), 2147483647));
    }
    setText(who, session.role === 'customer' ? 'Account ' + session.account : session.role + (session.sub ? ' ' + session.sub : ''));
    signoutBtn.hidden = false;
    setConn('Connecting…', 'down');
    connect();
    route();
  }

  function signInView(message) {
    nav.hidden = true;
    signoutBtn.hidden = true;
    setText(who, '');
    setConn('', '');
    var area = h('textarea', { id: 'token', name: 'token', required: true, autocomplete: 'off', spellcheck: 'false',
      'aria-describedby': 'token-help' });
    var msg = h('p', { id: 'signin-msg', class: 'error', role: 'alert', text: message || '' });
    var btn = h('button', { type: 'submit', text: 'Sign in' });
    var form = h('form', { id: 'signin' }, h('label', { for: 'token', text: 'Token' }), area,
      h('p', { id: 'token-help', class: 'muted' }, 'Paste a token from ', h('code', { text: 'npanel token' }),
        ', or open a one-time login link from ', h('code', { text: 'npanel token --login-link' }),
        '. It is kept for this browser tab only.'),
      h('div', { class: 'actions' }, btn), msg);
    form.addEventListener('submit', function (ev) {
      ev.preventDefault();
      var token = area.value.trim();
      var c = claimsOf(token);
      if (!c) { setText(msg, 'That does not look like an nPanel token (three parts separated by dots).'); area.focus(); return; }
      btn.disabled = true;
      session = { token: token, role: c.role };
      api('GET', c.role === 'admin' ? '/api/admin/queue' : '/api/jobs?limit=1', undefined, true).then(function () {
        S.setItem(KEYS.token, token);
        S.setItem(KEYS.role, c.role);
        S.setItem(KEYS.account, c.account || '');
        S.setItem(KEYS.expires, String((c.exp || 0) * 1000));
        location.hash = '#/';
        begin(token);
      }, function (e) {
        session = null;
        btn.disabled = false;
        setText(msg, e.status === 401 ? 'That token was refused: it has expired or was signed by another server.' : e.message);
        area.focus();
      });
    });
    main.textContent = '';
    main.appendChild(h('section', { class: 'signin', 'aria-labelledby': 'signin-h' }, h('h1', { id: 'signin-h', text: 'Sign in to nPanel' }), form));
    area.focus();
    if (!firstRender) { firstRender = true; performance.mark('npanel-first-render'); }
  }

  signoutBtn.addEventListener('click', function () { signOut('You have signed out.'); });
  document.querySelector('.skip').addEventListener('click', function (ev) {
    ev.preventDefault();
    main.focus();
  });
  window.addEventListener('hashchange', route);
  window.addEventListener('unhandledrejection', function (ev) { ev.preventDefault(); fail(ev.reason); });

  var saved = S.getItem(KEYS.token);
  if (saved) begin(saved);
  else signInView('');
})();
