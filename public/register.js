/* Registration page: the first administrator (setup code), or an administrator adding users. */
(function () {
  'use strict';
  var USERNAME = /^[a-z0-9][a-z0-9_-]{1,31}$/;
  var $ = function (id) {
    return document.getElementById(id);
  };
  var form = $('register-form');
  var submit = $('register-submit');
  var error = $('register-error');
  var ok = $('register-ok');
  var adminAuth = $('admin-auth');
  var asAdmin = false;

  function setAdminMode(me) {
    asAdmin = true;
    $('register-title').textContent = 'Add a user';
    $('register-intro').textContent = 'Signed in as ' + me.username + '. The new user can sign in right away.';
    $('setup-block').hidden = true;
    $('role-block').hidden = false;
    $('admin-link').hidden = false;
    submit.textContent = 'Add user';
  }

  // An administrator's session makes this an "add a user" page.
  GW.api('GET', '/gateway/api/me').then(
    function (me) {
      if (me && me.role === 'admin') setAdminMode(me);
    },
    function () {},
  );
  // With an administrator's credentials the new account may be either role.
  adminAuth.addEventListener('toggle', function () {
    if (!asAdmin) $('role-block').hidden = !adminAuth.open;
  });
  $('new-username').focus();

  form.addEventListener('submit', function (ev) {
    ev.preventDefault();
    GW.show(error, '', '');
    GW.show(ok, '', '');
    var username = $('new-username').value.trim().toLowerCase();
    var password = $('new-password').value;
    // Every problem at once, so the form is fixed in one go; focus goes to the first field to fix.
    var problems = [];
    var first = null;
    if (!USERNAME.test(username)) {
      problems.push('The username must be 2–32 characters: lower-case letters, digits, - and _, starting with a letter or digit.');
      first = first || $('new-username');
    }
    if (password.length < 8) {
      problems.push('Choose a password of at least 8 characters.');
      first = first || $('new-password');
    }
    if (password !== $('new-password2').value) {
      problems.push('The two passwords do not match.');
      first = first || $('new-password2');
    }
    if (problems.length) {
      GW.show(error, 'error', problems.join(' '));
      first.focus();
      return;
    }
    var body = { new_user_username: username, new_user_password: password };
    if (!asAdmin) {
      var code = $('setup-code').value.trim();
      if (code) body.setup_code = code;
      if (adminAuth.open && $('admin-username').value) {
        body.username = $('admin-username').value.trim();
        body.password = $('admin-password').value;
      }
    }
    if (!$('role-block').hidden) body.role = $('role').value;
    submit.disabled = true;
    GW.api('POST', '/register', body).then(
      function (created) {
        submit.disabled = false;
        var name = (created && created.username) || username;
        var role = (created && created.role) || body.role || 'user';
        form.reset();
        if (asAdmin) {
          GW.show(ok, 'ok', 'User ' + name + ' created (' + role + ').');
          $('new-username').focus();
          return;
        }
        GW.show(ok, 'ok', 'Account ' + name + ' created' + (role === 'admin' ? ' as administrator' : '') + '. You can sign in now.');
        $('register-signin').href = '/login?username=' + encodeURIComponent(name);
        $('register-next').hidden = false;
        submit.hidden = true;
      },
      function (e) {
        submit.disabled = false;
        GW.show(error, 'error', e.message);
      },
    );
  });
})();
