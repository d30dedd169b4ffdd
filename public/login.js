/* Sign-in page: POST /login, then go to `next` (same-site relative paths only, else `/`). */
(function () {
  'use strict';
  var form = document.getElementById('login-form');
  var user = document.getElementById('username');
  var pass = document.getElementById('password');
  var submit = document.getElementById('login-submit');
  var error = document.getElementById('login-error');
  var params = new URLSearchParams(location.search);
  var next = GW.safeNext(params.get('next'));

  var notice = document.getElementById('login-notice');
  if (params.get('username')) user.value = params.get('username');
  (user.value ? pass : user).focus();
  if (params.has('signed_out')) GW.show(notice, 'ok', 'You have been signed out.');

  // The first-run hint only while no administrator exists.
  GW.api('GET', '/gateway/login-state').then(
    function (s) {
      document.getElementById('first-run').hidden = !(s && s.first_run);
    },
    function () {},
  );

  /** What to tell a person whose sign-in was refused, and what they can do about it. */
  function refusal(e) {
    if (e.code === 'RATE_LIMITED') {
      var secs = e.details && e.details.retry_after;
      var wait = secs >= 60 ? Math.ceil(secs / 60) + ' minute' + (secs > 60 ? 's' : '') : secs + ' seconds';
      return 'Too many failed attempts: sign-in is locked' + (secs ? ' for ' + wait : ' for a while') + '. Wait, then try again.';
    }
    if (e.code === 'INVALID_CREDENTIALS')
      return 'Wrong username or password. Check that Caps Lock is off; if you forgot your password, ask an administrator to reset it.';
    return e.message;
  }

  // Already signed in (a valid cookie): no need to ask again.
  GW.api('GET', '/gateway/api/me').then(
    function (me) {
      if (me && me.username) location.replace(next);
    },
    function () {},
  );

  form.addEventListener('submit', function (ev) {
    ev.preventDefault();
    var username = user.value.trim();
    if (!username || !pass.value) {
      GW.show(error, 'error', 'Enter your username and password.');
      (username ? pass : user).focus();
      return;
    }
    GW.show(error, '', '');
    GW.show(notice, '', '');
    submit.disabled = true;
    GW.api('POST', '/login', { username: username, password: pass.value }).then(
      function () {
        location.replace(next);
      },
      function (e) {
        submit.disabled = false;
        pass.value = '';
        pass.focus();
        GW.show(error, 'error', refusal(e));
      },
    );
  });
})();
