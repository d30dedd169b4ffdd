/*
 * Added by comfyui-gateway to ComfyUI's index.html: shows who is signed in (with a logout button) and pins
 * ComfyUI's frontend user selection to the signed-in user. Small, no dependencies, no inline styles.
 */
(function () {
  'use strict';
  if (window.__comfyGateway) return;
  window.__comfyGateway = true;
  var script = document.currentScript;
  var pinned = null;

  // ComfyUI's frontend reads its user from these keys (multi-user mode); the gateway decides the user anyway
  // (it sets comfy-user upstream), so keep the page consistent with it and skip the user-select screen.
  function apply() {
    if (!pinned) return;
    try {
      if (localStorage.getItem('Comfy.userId') !== pinned.id) localStorage.setItem('Comfy.userId', pinned.id);
      if (localStorage.getItem('Comfy.userName') !== pinned.name) localStorage.setItem('Comfy.userName', pinned.name);
    } catch (_) {
      /* storage disabled: nothing to pin */
    }
  }
  function pin(id, name) {
    if (!id || !name) return;
    pinned = { id: String(id), name: String(name) };
    apply();
  }

  // The gateway writes the user into the tag, so the pin happens before ComfyUI's app script reads it.
  if (script && script.dataset.user) pin(script.dataset.comfyUser || script.dataset.user, script.dataset.user);
  window.addEventListener('storage', function (ev) {
    if (!ev.key || ev.key.indexOf('Comfy.user') === 0) apply();
  });
  setInterval(apply, 1000);
  if (/\/user-select\/?$/.test(location.pathname)) location.replace('/');

  function logout() {
    fetch('/logout', { method: 'POST', credentials: 'same-origin', headers: { Accept: 'application/json' } }).then(
      function (res) {
        location.assign(res.ok ? '/login' : '/logout');
      },
      function () {
        location.assign('/logout');
      },
    );
  }

  function node(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text) n.textContent = text;
    return n;
  }

  function render(me) {
    var host = document.createElement('div');
    host.id = 'comfy-gateway-badge';
    var root = host.attachShadow ? host.attachShadow({ mode: 'open' }) : host;
    var css = document.createElement('link');
    css.rel = 'stylesheet';
    css.href = '/gateway/static/inject.css';
    root.appendChild(css);
    var badge = node('div', 'badge');
    badge.setAttribute('role', 'status');
    if (me) {
      badge.appendChild(document.createTextNode('signed in as '));
      badge.appendChild(node('strong', 'user', me.username));
      badge.appendChild(node('span', 'sep', '·'));
      var admin = node('a', 'link', me.role === 'admin' ? 'Admin' : 'Account');
      admin.href = '/admin';
      badge.appendChild(admin);
      badge.appendChild(node('span', 'sep', '·'));
      var out = node('button', 'link', 'Log out');
      out.type = 'button';
      out.addEventListener('click', logout);
      badge.appendChild(out);
    } else {
      badge.appendChild(document.createTextNode('session ended'));
      badge.appendChild(node('span', 'sep', '·'));
      var signin = node('a', 'link', 'Sign in');
      signin.href = '/login?next=' + encodeURIComponent(location.pathname + location.search);
      badge.appendChild(signin);
    }
    root.appendChild(badge);
    (document.body || document.documentElement).appendChild(host);
  }

  function whenReady(fn) {
    if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', fn, { once: true });
    else fn();
  }

  fetch('/gateway/api/me', { credentials: 'same-origin', headers: { Accept: 'application/json' } })
    .then(function (res) {
      if (res.status === 401) return null;
      if (!res.ok) throw new Error('status ' + res.status);
      return res.json();
    })
    .then(
      function (me) {
        if (me && me.username) {
          // The tag's ComfyUI id wins over the bare name; /me may not carry one.
          if (me.comfy_user) pin(me.comfy_user, me.username);
          else if (!pinned || pinned.name !== me.username) pin(me.username, me.username);
        }
        whenReady(function () {
          render(me);
        });
      },
      function () {
        /* the badge is a convenience; ComfyUI works without it */
      },
    );
})();
