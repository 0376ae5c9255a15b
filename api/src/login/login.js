// nPanel's one-time login page: the code arrives in the URL fragment (#code=...), which no
// browser sends to a server. Take it, remove it from the address bar and the history, trade it
// once for a token, and keep the token in sessionStorage only (never in a URL).
'use strict';

(function () {
  var status = document.getElementById('status');
  var next = document.getElementById('next');

  function show(text, kind) {
    status.textContent = text;
    status.className = kind;
  }

  var match = /(?:^#|&)code=([A-Za-z0-9_-]+)/.exec(window.location.hash || '');
  if (window.location.hash) {
    history.replaceState(null, '', window.location.pathname + window.location.search);
  }
  if (!match) {
    show('This address holds no login code: open the login link you were given again, or ask for a new one.', 'error');
    return;
  }

  fetch('/api/auth/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'Accept': 'application/json' },
    body: JSON.stringify({ code: match[1] }),
    credentials: 'omit',
    cache: 'no-store',
    referrerPolicy: 'no-referrer'
  }).then(function (resp) {
    return resp.json().then(function (body) {
      return { status: resp.status, ok: resp.ok, body: body };
    }, function () {
      return { status: resp.status, ok: false, body: null };
    });
  }).then(function (r) {
    if (r.ok && r.body && typeof r.body.token === 'string') {
      sessionStorage.setItem('npanel.token', r.body.token);
      sessionStorage.setItem('npanel.role', r.body.role || '');
      sessionStorage.setItem('npanel.account', r.body.account || '');
      sessionStorage.setItem('npanel.expires_at', String(Date.now() + 1000 * (r.body.expires_in || 0)));
      show('Signed in as ' + (r.body.account || r.body.role) + '. Opening the dashboard…', 'ok');
      next.hidden = false;
      // The dashboard at / reads the same keys; replace() keeps this page out of the history.
      window.location.replace('/');
    } else if (r.status === 401) {
      show('This login link was already used or has expired: ask for a new one.', 'error');
    } else if (r.status === 429) {
      show('Too many sign-in attempts from your address: wait a minute, then ask for a new login link.', 'error');
    } else {
      var why = r.body && r.body.message ? r.body.message : 'the server answered HTTP ' + r.status;
      show('Signing in failed (' + why + '): ask for a new login link and try again.', 'error');
    }
  }, function () {
    show('nPanel could not be reached: check your connection, then ask for a new login link.', 'error');
  });
})();
