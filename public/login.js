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

  if (params.get('username')) user.value = params.get('username');
  (user.value ? pass : user).focus();

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
    submit.disabled = true;
    GW.api('POST', '/login', { username: username, password: pass.value }).then(
      function () {
        location.replace(next);
      },
      function (e) {
        submit.disabled = false;
        pass.value = '';
        pass.focus();
        GW.show(error, 'error', e.message);
      },
    );
  });
})();
