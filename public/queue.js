/* The admin page's queue sections: usage (everyone: their own; admins: all), workers, held prompts, per-user limits. */
(function () {
  'use strict';
  var $ = function (id) {
    return document.getElementById(id);
  };
  var el = GW.el;

  function num(id) {
    var v = $(id).value.trim();
    return v === '' ? null : Number(v);
  }

  function loadUsage() {
    GW.api('GET', '/gateway/api/usage').then(
      function (data) {
        var body = $('usage-table').tBodies[0];
        body.textContent = '';
        data.usage.forEach(function (r) {
          body.appendChild(
            el('tr', {}, [
              el('th', { scope: 'row', text: r.user }),
              el('td', { text: r.day }),
              el('td', { text: String(r.prompts) }),
              el('td', { text: r.gpu_seconds.toFixed(1) }),
              el('td', { text: String(r.images) }),
            ]),
          );
        });
        $('usage-empty').hidden = data.usage.length > 0;
      },
      function () {},
    );
  }

  function loadQueue() {
    GW.api('GET', '/gateway/api/queue').then(
      function (data) {
        var wb = $('worker-table').tBodies[0];
        wb.textContent = '';
        data.workers.forEach(function (w) {
          wb.appendChild(
            el('tr', {}, [
              el('th', { scope: 'row', text: w.name + ' (' + w.url + ')' }),
              el('td', { text: w.up ? 'up' : 'down' }),
              el('td', { text: String(w.running) }),
              el('td', { text: String(w.waiting) }),
            ]),
          );
        });
        var held = $('held-list');
        held.textContent = '';
        data.held.forEach(function (h) {
          held.appendChild(el('li', { text: h.user + ' · ' + h.prompt_id + (h.front ? ' · front' : '') }));
        });
        $('held-empty').hidden = data.held.length > 0;
        var list = $('limit-list');
        list.textContent = '';
        Object.keys(data.limits.users).forEach(function (name) {
          var l = data.limits.users[name];
          var show = function (v) {
            return v === null ? 'role default' : String(v);
          };
          list.appendChild(
            el('li', {}, [
              el('span', {
                text: name + ': waiting ' + show(l.max_waiting) + ', running ' + show(l.max_running) + ', per day ' + show(l.per_day),
              }),
              el('button', {
                type: 'button',
                className: 'secondary small',
                text: 'Remove',
                onclick: function () {
                  GW.api('DELETE', '/gateway/api/queue/limits/' + encodeURIComponent(name)).then(loadQueue, function () {});
                },
              }),
            ]),
          );
        });
      },
      function () {},
    );
  }

  $('limit-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var name = $('limit-user').value.trim();
    var body = { max_waiting: num('limit-waiting'), max_running: num('limit-running'), per_day: num('limit-day') };
    GW.api('PUT', '/gateway/api/queue/limits/' + encodeURIComponent(name), body).then(
      function () {
        GW.show($('limit-msg'), 'ok', 'Limits of ' + name + ' saved.');
        loadQueue();
      },
      function (e) {
        GW.show($('limit-msg'), 'error', e.message);
      },
    );
  });

  GW.api('GET', '/gateway/api/me').then(
    function (who) {
      loadUsage();
      if (who.role !== 'admin') return;
      $('queue').hidden = false;
      loadQueue();
      setInterval(loadQueue, 5000);
    },
    function () {},
  );
})();
