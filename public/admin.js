/* Account and administration page: own password and API tokens; for admins also users and IP lists. */
(function () {
  'use strict';
  var USERNAME = /^[a-z0-9][a-z0-9_-]{1,31}$/;
  /** Permissions the gateway knows; any other permission found on a user is shown as well. */
  var KNOWN_PERMISSIONS = ['download_models'];
  var el = GW.el;
  var $ = function (id) {
    return document.getElementById(id);
  };
  var me = null;

  function toLogin() {
    location.replace('/login?next=' + encodeURIComponent(location.pathname + location.search));
  }

  /** Runs an API call and reports its error in `msg`; a lost session goes back to the sign-in page. */
  function call(msg, method, url, body) {
    return GW.api(method, url, body).catch(function (e) {
      // A wrong current password is a 401 too, but the session itself is fine.
      if (e.status === 401 && e.code !== 'INVALID_CREDENTIALS') toLogin();
      GW.show(msg, 'error', e.message);
      throw e;
    });
  }

  function when(iso) {
    if (!iso) return 'never';
    var d = new Date(iso);
    return isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
  }

  // ---- own password ----
  $('password-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var msg = $('password-msg');
    GW.show(msg, '', '');
    var cur = $('current-password').value;
    var next = $('new-password').value;
    if (!cur || !next) return GW.show(msg, 'error', 'Enter your current password and a new one.');
    if (next !== $('new-password2').value) return GW.show(msg, 'error', 'The two new passwords do not match.');
    call(msg, 'POST', '/gateway/api/me/password', { current_password: cur, new_password: next }).then(
      function () {
        ev.target.reset();
        GW.show(msg, 'ok', 'Password changed. Sessions and tokens issued before the change no longer work.');
        // The change may have ended this very session; find out and sign in again if so.
        GW.api('GET', '/gateway/api/me').catch(function (e) {
          if (e.status === 401) setTimeout(toLogin, 1500);
        });
      },
      function () {},
    );
  });

  // ---- personal tokens ----
  function loadTokens() {
    return call($('tokens-msg'), 'GET', '/gateway/api/tokens').then(
      function (data) {
        var tokens = Array.isArray(data) ? data : (data && data.tokens) || [];
        var list = $('token-list');
        list.textContent = '';
        tokens.forEach(function (t) {
          list.appendChild(
            el('li', { className: 'row' }, [
              el('div', { className: 'grow' }, [
                el('strong', { text: t.name || '(unnamed)' }),
                ' ',
                el('span', { className: 'mono muted', text: t.prefix ? t.prefix + '…' : '' }),
                el('div', {
                  className: 'muted',
                  text:
                    'created ' +
                    when(t.created_at) +
                    ' · expires ' +
                    when(t.expires_at) +
                    (t.last_used_at ? ' · last used ' + when(t.last_used_at) : ''),
                }),
              ]),
              el('button', {
                type: 'button',
                className: 'danger small',
                text: 'Revoke',
                'aria-label': 'Revoke token ' + (t.name || t.id),
                onclick: function () {
                  if (!confirm('Revoke the token "' + (t.name || t.id) + '"? Scripts using it will stop working.')) return;
                  call($('tokens-msg'), 'DELETE', '/gateway/api/tokens/' + encodeURIComponent(t.id)).then(
                    function () {
                      GW.show($('tokens-msg'), 'ok', 'Token ' + (t.name || t.id) + ' revoked.');
                      loadTokens();
                    },
                    function () {},
                  );
                },
              }),
            ]),
          );
        });
        $('token-empty').hidden = tokens.length > 0;
      },
      function () {},
    );
  }

  $('token-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var msg = $('tokens-msg');
    GW.show(msg, '', '');
    $('token-secret').hidden = true;
    var name = $('token-name').value.trim();
    var hours = Number($('token-hours').value);
    if (!name) return GW.show(msg, 'error', 'Give the token a name so you can recognise it later.');
    if (!(hours >= 1) || Math.floor(hours) !== hours)
      return GW.show(msg, 'error', 'The expiry must be a whole number of hours (at least 1).');
    call(msg, 'POST', '/gateway/api/tokens', { name: name, expires_in_hours: hours }).then(
      function (t) {
        $('token-name').value = '';
        $('token-secret-value').value = t.token;
        $('token-secret').hidden = false;
        $('token-secret-value').select();
        loadTokens();
      },
      function () {},
    );
  });

  $('token-copy').addEventListener('click', function () {
    var input = $('token-secret-value');
    input.select();
    var done = function () {
      $('token-copy').textContent = 'Copied';
    };
    if (navigator.clipboard && navigator.clipboard.writeText) navigator.clipboard.writeText(input.value).then(done, function () {});
    else if (document.execCommand && document.execCommand('copy')) done();
  });

  // ---- users (admin) ----
  function permissionBoxes(container, current, onChange, idPrefix) {
    var all = KNOWN_PERMISSIONS.slice();
    (current || []).forEach(function (p) {
      if (all.indexOf(p) < 0) all.push(p);
    });
    all.forEach(function (p) {
      var box = el('input', { type: 'checkbox', id: idPrefix + p, checked: (current || []).indexOf(p) >= 0, onchange: onChange });
      box.dataset.permission = p;
      container.appendChild(el('label', { className: 'check', for: idPrefix + p }, [box, p]));
    });
  }

  function checkedPermissions(container) {
    return Array.prototype.slice
      .call(container.querySelectorAll('input[type=checkbox][data-permission]'))
      .filter(function (b) {
        return b.checked;
      })
      .map(function (b) {
        return b.dataset.permission;
      });
  }

  function userItem(u) {
    var msg = $('users-msg');
    var path = '/gateway/api/users/' + encodeURIComponent(u.username);
    var patch = function (body, done) {
      GW.show(msg, '', '');
      return call(msg, 'PATCH', path, body).then(
        function () {
          GW.show(msg, 'ok', done);
          loadUsers();
        },
        function () {
          loadUsers();
        },
      );
    };
    var isSelf = me && u.username === me.username;
    var role = el('select', { 'aria-label': 'Role of ' + u.username }, [
      el('option', { value: 'user', text: 'User', selected: u.role === 'user' }),
      el('option', { value: 'admin', text: 'Administrator', selected: u.role === 'admin' }),
    ]);
    role.addEventListener('change', function () {
      patch({ role: role.value }, u.username + ' is now ' + (role.value === 'admin' ? 'an administrator' : 'a user') + '.');
    });
    var disabled = el('input', {
      type: 'checkbox',
      id: 'dis-' + u.username,
      checked: !!u.disabled,
      onchange: function () {
        patch(
          { disabled: disabled.checked },
          u.username + (disabled.checked ? ' is disabled and signed out everywhere.' : ' is enabled again.'),
        );
      },
    });
    var perms = el('span', {});
    permissionBoxes(
      perms,
      u.permissions,
      function () {
        patch({ permissions: checkedPermissions(perms) }, 'Permissions of ' + u.username + ' saved.');
      },
      'perm-' + u.username + '-',
    );
    var newPass = el('input', {
      type: 'password',
      className: 'grow',
      placeholder: 'New password',
      autocomplete: 'new-password',
      'aria-label': 'New password for ' + u.username,
    });
    var reset = el('form', { className: 'row grow' }, [
      newPass,
      el('button', { type: 'submit', className: 'secondary small', text: 'Set password' }),
    ]);
    reset.addEventListener('submit', function (ev) {
      ev.preventDefault();
      if (!newPass.value) return GW.show(msg, 'error', 'Type the new password for ' + u.username + ' first.');
      patch({ password: newPass.value }, 'Password of ' + u.username + ' changed; their old sessions and tokens no longer work.');
    });
    var email = el('input', {
      type: 'email',
      className: 'grow',
      placeholder: 'Email (for Cloudflare Access)',
      value: u.email || '',
      autocomplete: 'off',
      'aria-label': 'Email of ' + u.username,
    });
    var emailForm = el('form', { className: 'row grow' }, [
      email,
      el('button', { type: 'submit', className: 'secondary small', text: 'Save email' }),
    ]);
    emailForm.addEventListener('submit', function (ev) {
      ev.preventDefault();
      var v = email.value.trim();
      patch({ email: v || null }, v ? 'Email of ' + u.username + ' set to ' + v + '.' : u.username + ' has no email now.');
    });
    var del = el('button', {
      type: 'button',
      className: 'danger small',
      text: 'Delete',
      'aria-label': 'Delete ' + u.username,
      onclick: function () {
        if (!confirm('Delete the user "' + u.username + '"? This cannot be undone.')) return;
        var files = confirm(
          'Also delete ' + u.username + '’s input and output files?\nOK: delete them. Cancel: keep them, readable by administrators only.',
        )
          ? 'delete'
          : 'keep';
        GW.show(msg, '', '');
        call(msg, 'DELETE', path + '?files=' + files).then(
          function () {
            GW.show(
              msg,
              'ok',
              'User ' +
                u.username +
                ' deleted. ' +
                (files === 'delete' ? 'Their files were deleted too.' : 'Their files are kept, readable by administrators only.'),
            );
            loadUsers();
          },
          function () {},
        );
      },
    });
    var li = el('li', {}, [
      el('div', { className: 'row' }, [
        el('strong', { className: 'grow', text: u.username }),
        u.role === 'admin' ? el('span', { className: 'pill admin', text: 'admin' }) : null,
        u.disabled ? el('span', { className: 'pill warn', text: 'disabled' }) : null,
        isSelf ? el('span', { className: 'pill', text: 'you' }) : null,
      ]),
      el('div', { className: 'row' }, [role, el('label', { className: 'check', for: 'dis-' + u.username }, [disabled, 'Disabled']), perms]),
      el('div', { className: 'row' }, [emailForm]),
      el('div', { className: 'row' }, [reset, del]),
      u.created_at ? el('div', { className: 'muted', text: 'created ' + when(u.created_at) }) : null,
    ]);
    li.dataset.username = u.username;
    return li;
  }

  /** One summary row per user: role, permissions, last sign-in, tokens, status. */
  function userRow(u) {
    var perms = u.role === 'admin' ? 'all' : (u.permissions || []).join(', ') || '—';
    return el('tr', {}, [
      el('th', { scope: 'row', text: u.username }),
      el('td', { text: u.role === 'admin' ? 'Administrator' : 'User' }),
      el('td', { text: perms }),
      el('td', { text: u.last_sign_in ? when(u.last_sign_in) : '—' }),
      el('td', { text: String(u.tokens || 0) }),
      el('td', { text: u.disabled ? 'disabled' : 'active' }),
    ]);
  }

  function loadUsers() {
    return call($('users-msg'), 'GET', '/gateway/api/users').then(
      function (data) {
        var users = (data && data.users) || [];
        var list = $('user-list');
        var rows = $('user-table').tBodies[0];
        list.textContent = '';
        rows.textContent = '';
        users.forEach(function (u) {
          rows.appendChild(userRow(u));
          list.appendChild(userItem(u));
        });
      },
      function () {},
    );
  }

  $('user-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var msg = $('users-msg');
    GW.show(msg, '', '');
    var username = $('user-name').value.trim().toLowerCase();
    var password = $('user-password').value;
    if (!USERNAME.test(username))
      return GW.show(
        msg,
        'error',
        'The username must be 2–32 characters: lower-case letters, digits, - and _, starting with a letter or digit.',
      );
    if (!password) return GW.show(msg, 'error', 'Choose a password for the new user.');
    var body = { username: username, password: password, role: $('user-role').value, permissions: checkedPermissions($('user-perms')) };
    var newEmail = $('user-email').value.trim();
    if (newEmail) body.email = newEmail;
    // The password never stays in the form, whatever the answer.
    $('user-password').value = '';
    call(msg, 'POST', '/gateway/api/users', body).then(
      function () {
        $('user-form').reset();
        GW.show(msg, 'ok', 'User ' + username + ' created. They can sign in now.');
        loadUsers();
      },
      function () {},
    );
  });

  // ---- IP lists (admin) ----
  function lines(text) {
    return text
      .split(/\r?\n/)
      .map(function (l) {
        return l.trim();
      })
      .filter(function (l) {
        return l && l.charAt(0) !== '#';
      });
  }
  function asText(list) {
    return (list || [])
      .map(function (e) {
        return typeof e === 'string' ? e : (e && (e.value || e.entry || e.cidr)) || '';
      })
      .join('\n');
  }
  function loadIpLists() {
    return call($('ip-msg'), 'GET', '/gateway/api/ip-lists').then(
      function (data) {
        $('whitelist').value = asText(data && data.whitelist);
        $('blacklist').value = asText(data && data.blacklist);
      },
      function () {},
    );
  }
  $('ip-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var msg = $('ip-msg');
    GW.show(msg, '', '');
    var body = { whitelist: lines($('whitelist').value), blacklist: lines($('blacklist').value) };
    call(msg, 'PUT', '/gateway/api/ip-lists', body).then(
      function (saved) {
        if (saved && (saved.whitelist || saved.blacklist)) {
          $('whitelist').value = asText(saved.whitelist);
          $('blacklist').value = asText(saved.blacklist);
        }
        GW.show(msg, 'ok', 'IP lists saved (' + body.whitelist.length + ' allowed, ' + body.blacklist.length + ' blocked).');
      },
      function () {},
    );
  });

  // ---- start ----
  $('logout').addEventListener('click', function () {
    GW.logout();
  });

  GW.api('GET', '/gateway/api/me').then(
    function (who) {
      me = who;
      $('whoami').textContent = 'Signed in as ' + who.username + (who.role === 'admin' ? ' (administrator)' : '');
      $('pw-username').value = who.username;
      $('main').hidden = false;
      loadTokens();
      if (who.role === 'admin') {
        $('users').hidden = false;
        $('iplists').hidden = false;
        permissionBoxes($('user-perms'), [], null, 'new-perm-');
        loadUsers();
        loadIpLists();
      }
    },
    function (e) {
      if (e.status === 401) return toLogin();
      GW.show($('page-error'), 'error', e.message);
    },
  );
})();
