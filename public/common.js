/* Shared helpers for the gateway's pages (login, register, admin). Plain script, no dependencies. */
(function () {
  'use strict';

  /** The gateway's error.message plus what its details say about each field or entry, for a human. */
  function describe(message, details) {
    var parts = [];
    if (details && details.fields && typeof details.fields === 'object') {
      Object.keys(details.fields).forEach(function (k) {
        parts.push(k.replace(/^new_user_/, '').replace(/_/g, ' ') + ' ' + details.fields[k]);
      });
    }
    if (details && Array.isArray(details.problems)) {
      details.problems.slice(0, 5).forEach(function (p) {
        if (p && p.message) parts.push((p.entry ? p.entry + ': ' : '') + p.message);
      });
    }
    return parts.length ? message + ' (' + parts.join('; ') + ')' : message;
  }

  /** Error thrown for a non-2xx answer; message is the gateway's error.message (with field details). */
  function ApiError(status, code, message, details) {
    var e = new Error(describe(message, details));
    e.status = status;
    e.code = code;
    e.details = details || {};
    return e;
  }

  /** JSON request to the gateway with the session cookie; resolves the parsed body, rejects with ApiError. */
  function api(method, url, body) {
    var init = { method: method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    return fetch(url, init).then(
      function (res) {
        return res.text().then(function (text) {
          var data = null;
          try {
            data = text ? JSON.parse(text) : null;
          } catch (_) {
            data = null;
          }
          if (res.ok) return data;
          var err = data && data.error;
          throw ApiError(
            res.status,
            (err && err.code) || 'HTTP_' + res.status,
            (err && err.message) || 'The gateway answered ' + res.status + ' ' + (res.statusText || ''),
            err && err.details,
          );
        });
      },
      function () {
        throw ApiError(0, 'NETWORK', 'Cannot reach the gateway. Check your connection and try again.');
      },
    );
  }

  /**
   * The post-login destination: only a same-site relative path (one leading `/`, not `//` or `/\`,
   * no scheme, no control characters); anything else goes to `/`, so `next=` is never an open redirect.
   */
  function safeNext(raw) {
    if (typeof raw !== 'string' || raw.length === 0 || raw.length > 2048) return '/';
    if (raw.charAt(0) !== '/') return '/';
    if (raw.charAt(1) === '/' || raw.charAt(1) === '\\') return '/';
    // Browsers drop tabs/newlines and treat `\` as `/` when parsing, which would turn `/\t/x` into `//x`.
    if (/[\u0000-\u001f\u007f\\]/.test(raw)) return '/';
    var u;
    try {
      u = new URL(raw, location.origin);
    } catch (_) {
      return '/';
    }
    if (u.origin !== location.origin) return '/';
    // Back to the sign-in or sign-out page would just loop.
    if (/^\/(login|logout)(\/|$)/i.test(u.pathname)) return '/';
    return u.pathname + u.search + u.hash;
  }

  /** Shows a message in a status element (kind: 'error' | 'ok'); empty text hides it. */
  function show(el, kind, text) {
    if (!el) return;
    el.textContent = text || '';
    el.className = 'msg' + (kind ? ' ' + kind : '');
    el.hidden = !text;
  }

  /** Creates an element with properties and children (text nodes for strings; never HTML parsing). */
  function el(tag, props, children) {
    var node = document.createElement(tag);
    if (props) {
      Object.keys(props).forEach(function (k) {
        var v = props[k];
        if (v === undefined || v === null || v === false) return;
        if (k === 'text') node.textContent = v;
        else if (k === 'className') node.className = v;
        else if (k.indexOf('on') === 0 && typeof v === 'function') node.addEventListener(k.slice(2), v);
        else if (k in node && typeof v !== 'string') node[k] = v;
        else node.setAttribute(k, v === true ? '' : String(v));
      });
    }
    (children || []).forEach(function (c) {
      if (c === null || c === undefined || c === false) return;
      node.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    });
    return node;
  }

  /** Signs out (revokes the session server-side) and goes to the sign-in page. */
  function logout() {
    return api('POST', '/logout').then(
      function () {
        location.assign('/login?signed_out=1');
      },
      function () {
        // GET /logout clears the cookie too, and redirects to the sign-in page.
        location.assign('/logout');
      },
    );
  }

  window.GW = { api: api, safeNext: safeNext, show: show, el: el, logout: logout };
})();
