// The orgsync console's only script. Served by orgsync itself; no inline script anywhere.
(function () {
  'use strict';

  // Parts of a page marked data-refresh-url are re-rendered by the server every
  // data-refresh-ms milliseconds (the server's HTML is escaped; nothing here builds markup).
  document.querySelectorAll('[data-refresh-url]').forEach(function (el) {
    var url = el.getAttribute('data-refresh-url');
    var every = parseInt(el.getAttribute('data-refresh-ms') || '5000', 10);
    var tick = function () {
      fetch(url, { credentials: 'same-origin', headers: { 'Accept': 'text/html' } })
        .then(function (r) {
          if (r.redirected) { window.location.reload(); return null; } // signed out
          return r.ok ? r.text() : null;
        })
        .then(function (html) { if (html !== null) { el.innerHTML = html; } })
        .catch(function () { /* the next tick tries again */ })
        .then(function () { setTimeout(tick, every); });
    };
    setTimeout(tick, every);
  });

  // The change feed: each server-sent `change` event is a row, newest on top, built with
  // textContent only (a name from Clerk stays text).
  var feed = document.querySelector('[data-stream-url]');
  if (feed && window.EventSource) {
    var rows = feed.querySelector('tbody');
    var state = document.getElementById('stream-state');
    var source = new EventSource(feed.getAttribute('data-stream-url'));
    var columns = ['id', 'at', 'entity', 'op', 'entity_id', 'hotel_id', 'user_id', 'source', 'job_id'];
    source.addEventListener('change', function (event) {
      var change = JSON.parse(event.data);
      var tr = document.createElement('tr');
      tr.className = 'fresh';
      tr.setAttribute('data-change-id', String(change.id));
      columns.forEach(function (key) {
        var td = document.createElement('td');
        var value = change[key] === null || change[key] === undefined ? '' : String(change[key]);
        if (key === 'at') { value = new Date(value).toISOString(); } // as the server renders it
        if (key === 'entity_id' || key === 'hotel_id' || key === 'user_id') { td.className = 'mono'; }
        if (key === 'job_id' && value !== '') {
          var a = document.createElement('a');
          a.href = '/console/jobs/' + encodeURIComponent(value);
          a.textContent = value;
          td.appendChild(a);
        } else {
          td.textContent = value;
        }
        tr.appendChild(td);
      });
      rows.insertBefore(tr, rows.firstChild);
      while (rows.children.length > 500) { rows.removeChild(rows.lastChild); }
      var empty = document.getElementById('no-changes');
      if (empty) { empty.remove(); }
    });
    source.onopen = function () { if (state) { state.textContent = 'following live'; } };
    source.onerror = function () { if (state) { state.textContent = 'reconnecting…'; } };
  }
})();
