// The ratemesh merchandiser console: one page script, no framework. Every figure comes
// from the JSON gateway (/api/...), which calls the ratemesh services as the signed-in
// user; this script only draws what they answer and sends what the user asks for.
'use strict';

(() => {
  const console_ = {
    session: null, // {name, role, csrf}
    stream: null, // the live EventSource of the current page
    run: null, // the AbortController of a what-if run in progress
  };

  // ---- small helpers -------------------------------------------------------------------

  /** An element: el('td', {class: 'num', text: '5'}, child, ...). */
  function el(tag, attrs, ...children) {
    const node = tag === 'svg' || SVG_TAGS.has(tag)
      ? document.createElementNS('http://www.w3.org/2000/svg', tag)
      : document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'text') node.textContent = value;
      else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? '' : value);
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const SVG_TAGS = new Set(['polyline', 'line', 'text', 'title', 'desc', 'circle', 'g']);

  /** A decimal fraction as a percentage for display ("0.0825" -> "8.25 %"). */
  function pct(rate) {
    if (rate === null || rate === undefined || rate === '') return '–';
    return (Number(rate) * 100).toFixed(2) + ' %';
  }
  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : '–';
  }
  function orDash(text) {
    return text === null || text === undefined || text === '' ? '–' : String(text);
  }
  function say(message, kind) {
    const status = document.getElementById('status');
    status.textContent = message || '';
    status.className = 'status' + (kind ? ' ' + kind : '');
  }

  /** Calls the gateway; answers {ok, status, data}. A lost session shows the sign-in. */
  async function api(method, path, body) {
    const headers = {Accept: 'application/json'};
    if (method !== 'GET') {
      headers['Content-Type'] = 'application/json';
      if (console_.session) headers['X-CSRF-Token'] = console_.session.csrf;
    }
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        credentials: 'same-origin',
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      return {ok: false, status: 0, data: {error: 'the console cannot be reached'}};
    }
    let data = {};
    try { data = await response.json(); } catch (err) { data = {}; }
    if (response.status === 401 && path !== '/api/session') {
      showSignIn('Your session ended; sign in again.');
    }
    return {ok: response.ok, status: response.status, data};
  }

  /** The message of a failed call, with the field it names. */
  function problem(answer) {
    const error = (answer.data && answer.data.error) || ('request failed (' + answer.status + ')');
    return answer.data && answer.data.field ? error + ' (' + answer.data.field + ')' : error;
  }

  function stopStream() {
    if (console_.stream) {
      console_.stream.close();
      console_.stream = null;
    }
  }

  /** Rate changes as they are published; `onRate` gets {card, previous_rate}. */
  function openStream(query, onRate) {
    stopStream();
    const source = new EventSource('/api/rates/stream' + query);
    source.addEventListener('rate', (event) => onRate(JSON.parse(event.data)));
    source.addEventListener('open', () => { document.body.dataset.live = 'on'; });
    source.addEventListener('error', () => { document.body.dataset.live = 'reconnecting'; });
    console_.stream = source;
  }

  function page(title, ...children) {
    const root = document.getElementById('page');
    root.replaceChildren(el('h1', {text: title}), ...children);
    document.title = title + ' · ratemesh console';
    return root;
  }

  /** A labelled form control. */
  function field(label, control) {
    return el('div', {class: 'field'}, el('label', {for: control.id, text: label}), control);
  }

  function table(caption, headings, rows, empty) {
    if (!rows.length) return el('p', {class: 'empty', text: empty});
    return el('div', {class: 'scroll'},
      el('table', {},
        el('caption', {class: 'visually-hidden', text: caption}),
        el('thead', {}, el('tr', {}, headings.map((h) => el('th', {scope: 'col', text: h})))),
        el('tbody', {}, rows)));
  }

  /** Asks for a reason in a row under `row`, then runs `action(reason)`. */
  function askReason(row, verb, action) {
    const next = row.nextElementSibling;
    if (next && next.classList.contains('ask')) { next.remove(); return; }
    const id = 'reason-' + Math.random().toString(36).slice(2);
    const input = el('input', {id, required: true, maxlength: 1024});
    const error = el('span', {class: 'error', role: 'alert'});
    const form = el('form', {class: 'inline', onsubmit: async (event) => {
      event.preventDefault();
      const answer = await action(input.value);
      if (!answer.ok) error.textContent = problem(answer);
    }}, field('Reason', input), el('button', {type: 'submit', text: verb}), error);
    row.after(el('tr', {class: 'ask'}, el('td', {colspan: row.children.length}, form)));
    input.focus();
  }

  // ---- sign-in -------------------------------------------------------------------------

  function showSignIn(message) {
    stopStream();
    cancelRun();
    console_.session = null;
    document.getElementById('nav').hidden = true;
    document.getElementById('who').hidden = true;
    document.getElementById('page').replaceChildren();
    document.getElementById('sign-in').hidden = false;
    document.getElementById('sign-in-error').textContent = message || '';
    document.title = 'Sign in · ratemesh console';
    document.getElementById('api-key').focus();
  }

  function signedIn(session) {
    console_.session = session;
    document.getElementById('sign-in').hidden = true;
    document.getElementById('nav').hidden = false;
    document.getElementById('who').hidden = false;
    document.getElementById('who-name').textContent = session.name + ' (' + session.role + ')';
    route();
  }

  async function signIn(event) {
    event.preventDefault();
    const input = document.getElementById('api-key');
    const answer = await api('POST', '/api/session', {key: input.value});
    if (!answer.ok) {
      document.getElementById('sign-in-error').textContent = problem(answer);
      return;
    }
    input.value = '';
    signedIn(answer.data);
  }

  async function signOut() {
    await api('DELETE', '/api/session');
    location.hash = '';
    showSignIn('Signed out.');
  }

  // ---- routing -------------------------------------------------------------------------

  function route() {
    if (!console_.session) return;
    stopStream();
    cancelRun();
    say('');
    const hash = location.hash.replace(/^#\/?/, '');
    const [name, ...rest] = hash.split('/');
    for (const link of document.querySelectorAll('#nav a')) {
      if (link.dataset.page === (name || 'rates')) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    const pages = {rates: ratesPage, sku: skuPage, overrides: overridesPage,
      incentives: incentivesPage, partners: partnersPage, whatif: whatifPage};
    (pages[name] || ratesPage)(decodeURIComponent(rest.join('/')));
    // A keyboard or screen-reader user starts at the new page's heading, not in the menu.
    document.getElementById('main').focus();
  }

  // ---- rates ---------------------------------------------------------------------------

  const ratesQuery = {q: '', category: '', band: '', reason: '', sort: 'sku', dir: 'asc', page: 1};

  function rateRow(card) {
    return el('tr', {'data-sku': card.sku},
      el('td', {}, el('a', {href: '#/sku/' + encodeURIComponent(card.sku), text: card.sku})),
      el('td', {text: card.category}),
      el('td', {class: 'num rate', text: pct(card.effective_rate)}),
      el('td', {class: 'num prev', text: pct(card.previous_rate)}),
      el('td', {class: 'band', text: orDash(card.band)}),
      el('td', {class: 'reasons', text: card.reasons.map((r) => r.code).join(', ')}),
      el('td', {class: 'num version', text: card.version}),
      el('td', {class: 'computed', text: when(card.computed_at)}));
  }

  async function ratesPage() {
    const select = (id, label, values, current) => field(label,
      el('select', {id, name: id},
        el('option', {value: '', text: 'any'}),
        values.map((v) => el('option', {value: v, text: v, selected: v === current}))));
    const body = el('div', {});
    const root = page('Rates', body);
    const load = async () => {
      const params = new URLSearchParams(ratesQuery);
      const answer = await api('GET', '/api/rates?' + params);
      if (!answer.ok) { body.replaceChildren(el('p', {class: 'error', role: 'alert', text: problem(answer)})); return; }
      const data = answer.data;
      const q = el('input', {id: 'rates-q', name: 'q', type: 'search', value: ratesQuery.q});
      const form = el('form', {class: 'filters', role: 'search', onsubmit: (event) => {
        event.preventDefault();
        ratesQuery.q = q.value.trim();
        for (const name of ['category', 'band', 'reason']) {
          ratesQuery[name] = form.querySelector('#rates-' + name).value;
        }
        ratesQuery.page = 1;
        load();
      }},
        field('SKU', q),
        select('rates-category', 'Category', data.categories, ratesQuery.category),
        select('rates-band', 'Band', data.bands, ratesQuery.band),
        select('rates-reason', 'Reason', data.reasons, ratesQuery.reason),
        el('button', {type: 'submit', text: 'Search'}));
      const columns = [['sku', 'SKU'], ['category', 'Category'], ['effective_rate', 'Rate'],
        [null, 'Previous'], ['band', 'Band'], [null, 'Reasons'], ['version', 'Version'],
        ['computed_at', 'Computed']];
      const head = el('tr', {}, columns.map(([key, label]) => {
        const numeric = ['effective_rate', 'version'].includes(key) || label === 'Previous';
        if (!key) return el('th', {scope: 'col', class: numeric ? 'num' : null, text: label});
        const sorted = data.sort === key;
        const dir = sorted ? ratesQuery.dir : null;
        return el('th', {scope: 'col', class: numeric ? 'num' : null,
          'aria-sort': sorted ? (dir === 'asc' ? 'ascending' : 'descending') : 'none'},
          el('button', {type: 'button', class: 'sort', onclick: () => {
            ratesQuery.dir = sorted && ratesQuery.dir === 'asc' ? 'desc' : 'asc';
            ratesQuery.sort = key;
            load();
          }}, label, sorted ? (dir === 'asc' ? ' ▲' : ' ▼') : ''));
      }));
      const rows = data.cards.map(rateRow);
      const results = data.cards.length
        ? el('div', {class: 'scroll'}, el('table', {id: 'rates-table'},
          el('caption', {text: data.total + (data.total === 1 ? ' SKU' : ' SKUs') + ' · updated live'}),
          el('thead', {}, head), el('tbody', {}, rows)))
        : el('p', {class: 'empty', text: 'No SKU matches.'});
      const pager = el('nav', {class: 'pager', 'aria-label': 'Pages of rates'},
        el('button', {type: 'button', class: 'secondary', disabled: data.page <= 1,
          onclick: () => { ratesQuery.page = data.page - 1; load(); }, text: 'Previous'}),
        el('span', {text: 'Page ' + data.page + ' of ' + data.pages}),
        el('button', {type: 'button', class: 'secondary', disabled: data.page >= data.pages,
          onclick: () => { ratesQuery.page = data.page + 1; load(); }, text: 'Next'}));
      body.replaceChildren(form, results, pager);
    };
    await load();
    openStream('', ({card}) => {
      const row = root.querySelector('tr[data-sku="' + CSS.escape(card.sku) + '"]');
      if (!row) return;
      const fresh = rateRow(card);
      fresh.classList.add('changed');
      row.replaceWith(fresh);
    });
  }

  // ---- SKU -----------------------------------------------------------------------------

  function chart(points) {
    if (!points.length) return el('p', {class: 'empty', text: 'No published rate yet.'});
    const width = 640, height = 200, pad = 44;
    const times = points.map((p) => Date.parse(p.computed_at));
    const rates = points.map((p) => Number(p.rate));
    const t0 = times[0], t1 = Math.max(Date.now(), times[times.length - 1] + 1);
    const top = Math.max(...rates) * 1.15 || 0.01;
    const x = (t) => pad + (width - 2 * pad) * (t - t0) / (t1 - t0);
    const y = (r) => height - pad / 2 - (height - pad) * r / top;
    let path = '';
    points.forEach((p, i) => {
      const xi = x(times[i]);
      if (i > 0) path += ' ' + xi.toFixed(1) + ',' + y(rates[i - 1]).toFixed(1);
      path += ' ' + xi.toFixed(1) + ',' + y(rates[i]).toFixed(1);
    });
    path += ' ' + x(t1).toFixed(1) + ',' + y(rates[rates.length - 1]).toFixed(1);
    const summary = points.length + ' published rate' + (points.length === 1 ? '' : 's') +
      ' from ' + pct(points[0].rate) + ' to ' + pct(points[points.length - 1].rate) +
      ', highest ' + pct(String(Math.max(...rates))) + ', lowest ' + pct(String(Math.min(...rates)));
    return el('figure', {class: 'chart'},
      el('svg', {viewBox: '0 0 ' + width + ' ' + height, role: 'img', 'aria-label': 'Rate history: ' + summary},
        el('title', {text: 'Rate history'}),
        el('desc', {text: summary}),
        el('line', {x1: pad, y1: y(0), x2: width - pad, y2: y(0), class: 'axis'}),
        el('line', {x1: pad, y1: y(0), x2: pad, y2: y(top), class: 'axis'}),
        el('text', {x: pad - 4, y: y(0), class: 'label end', text: '0 %'}),
        el('text', {x: pad - 4, y: y(top) + 10, class: 'label end', text: pct(String(top))}),
        el('text', {x: pad, y: height - 2, class: 'label', text: new Date(t0).toLocaleString()}),
        el('text', {x: width - pad, y: height - 2, class: 'label end', text: 'now'}),
        el('polyline', {points: path.trim(), class: 'line'}),
        points.map((p, i) => el('circle', {cx: x(times[i]), cy: y(rates[i]), r: 3, class: 'dot'},
          el('title', {text: 'v' + p.version + ': ' + pct(p.rate) + ' at ' + when(p.computed_at)})))),
      el('figcaption', {text: summary}));
  }

  function cardSection(card) {
    if (!card) return el('p', {class: 'empty', text: 'No published rate.'});
    const parts = card.parts;
    return el('div', {class: 'rate-card', id: 'rate-card'},
      el('p', {class: 'big'}, el('span', {id: 'sku-rate', text: pct(card.effective_rate)}),
        el('span', {class: 'muted', text: ' · version ' + card.version + ' · band ' + orDash(card.band)})),
      el('p', {class: 'muted', text: 'Computed ' + when(card.computed_at) +
        (card.guaranteed_until ? ' · guaranteed until ' + when(card.guaranteed_until) : '') +
        (card.previous_rate ? ' · was ' + pct(card.previous_rate) : '')}),
      el('h3', {text: 'Parts'}),
      el('dl', {class: 'parts'},
        [['Base', parts.base], ['Inventory', parts.inventory_adjustment], ['Boost', parts.boost],
          ['Incentive', parts.incentive], ['Overrides', parts.override_adjustment],
          ['Guardrails', parts.guardrail_adjustment]].map(([name, value]) =>
          [el('dt', {text: name}), el('dd', {text: pct(value)})])),
      el('h3', {text: 'Why'}),
      el('ul', {class: 'reasons', id: 'sku-reasons'},
        card.reasons.map((r) => el('li', {}, el('code', {text: r.code}), ' ', r.text))));
  }

  function inputsSection(inputs, status) {
    const product = inputs.product || {};
    const rows = [
      ['Title', product.title], ['Category', product.category],
      ['Price', product.price && product.price + ' ' + product.currency],
      ['Unit cost', product.unit_cost], ['Base rate', product.base_rate && pct(product.base_rate)],
      ['Available', inputs.available], ['Velocity (units/day)', inputs.velocity && inputs.velocity + ' (' + inputs.velocity_source + ')'],
      ['Days of cover', inputs.days_of_cover], ['Band now', inputs.band],
      ['Peak window', inputs.peak_window], ['Policy mode', inputs.policy_mode],
      ['Target rate', inputs.target_rate && pct(inputs.target_rate)],
      ['May move at', inputs.may_move_at && when(inputs.may_move_at)],
    ];
    return el('div', {},
      status ? el('p', {class: 'notice', text: status}) : null,
      el('dl', {class: 'inputs'}, rows.map(([name, value]) =>
        [el('dt', {text: name}), el('dd', {text: orDash(value)})])));
  }

  function overrideRows(overrides, reload) {
    return overrides.map((o) => {
      const row = el('tr', {'data-override': o.id},
        el('td', {text: o.kind}), el('td', {class: 'num', text: o.kind === 'multiplier' ? '× ' + o.value : (o.value ? pct(o.value) : '–')}),
        el('td', {text: o.scope + ' ' + o.target}), el('td', {text: o.status}),
        el('td', {text: when(o.starts_at) + ' – ' + (o.ends_at ? when(o.ends_at) : 'until cleared')}),
        el('td', {text: o.reason}), el('td', {text: o.author}),
        el('td', {}, o.status === 'active' || o.status === 'scheduled'
          ? el('button', {type: 'button', class: 'secondary', text: 'Clear', onclick: () =>
            askReason(row, 'Clear override', async (reason) => {
              const answer = await api('POST', '/api/overrides/' + encodeURIComponent(o.id) + '/clear', {reason});
              if (answer.ok) { say('Override cleared.', 'ok'); reload(); }
              return answer;
            })})
          : null));
      return row;
    });
  }
  const OVERRIDE_HEADINGS = ['Kind', 'Value', 'Scope', 'Status', 'Window', 'Reason', 'Author', ''];

  function incentiveRows(incentives, reload) {
    const used = (spent, budget) => budget ? spent + ' of ' + budget : spent + ' (no budget)';
    return incentives.map((i) => {
      const row = el('tr', {'data-incentive': i.id},
        el('td', {}, el('a', {href: '#/sku/' + encodeURIComponent(i.sku), text: i.sku})),
        el('td', {class: 'num', text: pct(i.bonus_rate)}),
        el('td', {class: 'state', text: i.state + (i.end_reason ? ' (' + i.end_reason + ')' : '')}),
        el('td', {text: i.origin + ' · ' + i.opened_by}),
        el('td', {text: when(i.starts_at) + ' – ' + when(i.ended_at || i.ends_at)}),
        el('td', {text: used(i.spent, i.budget_spend)}),
        el('td', {text: used(i.units_sold, i.budget_units)}),
        el('td', {text: i.cancel_reason || i.reason}),
        el('td', {}, i.state === 'active'
          ? el('button', {type: 'button', class: 'secondary', text: 'Cancel', onclick: () =>
            askReason(row, 'Cancel incentive', async (reason) => {
              const answer = await api('POST', '/api/incentives/' + encodeURIComponent(i.id) + '/cancel', {reason});
              if (answer.ok) { say('Incentive on ' + i.sku + ' cancelled.', 'ok'); reload(); }
              return answer;
            })})
          : null));
      return row;
    });
  }
  const INCENTIVE_HEADINGS = ['SKU', 'Bonus', 'State', 'Opened by', 'Window', 'Spend used', 'Units used', 'Reason', ''];

  /** The form that sets an override; `fixedSku` scopes it to one SKU. */
  function overrideForm(fixedSku, done) {
    const id = (name) => 'ov-' + name;
    const scope = el('select', {id: id('scope')}, el('option', {value: 'sku', text: 'SKU'}), el('option', {value: 'category', text: 'Category'}));
    const target = el('input', {id: id('target'), value: fixedSku || '', required: true});
    const kind = el('select', {id: id('kind')}, ['pin', 'floor', 'cap', 'multiplier', 'exclude'].map((k) => el('option', {value: k, text: k})));
    const value = el('input', {id: id('value'), inputmode: 'decimal', placeholder: '0.05 = 5 %'});
    const starts = el('input', {id: id('starts'), type: 'datetime-local'});
    const ends = el('input', {id: id('ends'), type: 'datetime-local'});
    const reason = el('input', {id: id('reason'), required: true, maxlength: 1024});
    const replace = el('input', {id: id('replace'), type: 'checkbox'});
    const error = el('div', {class: 'error', id: id('error'), role: 'alert'});
    const iso = (input) => input.value ? new Date(input.value).toISOString() : null;
    const form = el('form', {class: 'grid', id: 'override-form', onsubmit: async (event) => {
      event.preventDefault();
      error.replaceChildren();
      const body = {kind: kind.value, value: value.value, reason: reason.value,
        starts_at: iso(starts), ends_at: iso(ends), replace_conflicting: replace.checked};
      body[scope.value] = target.value;
      const answer = await api('POST', '/api/overrides', body);
      if (!answer.ok) {
        error.append(el('p', {text: problem(answer)}));
        const conflicts = answer.data.conflicts || [];
        if (conflicts.length) {
          error.append(el('p', {text: 'In conflict with (tick “replace conflicting” to replace them):'}),
            table('Conflicting overrides', OVERRIDE_HEADINGS.slice(0, 7), conflicts.map((o) => el('tr', {},
              el('td', {text: o.kind}), el('td', {text: o.value}), el('td', {text: o.scope + ' ' + o.target}),
              el('td', {text: o.status}), el('td', {text: when(o.starts_at) + ' – ' + (o.ends_at ? when(o.ends_at) : 'until cleared')}),
              el('td', {text: o.reason}), el('td', {text: o.author}))), ''));
        }
        const bad = answer.data.field && {'override.value': value, 'override.reason': reason,
          'override.starts_at': starts, 'override.ends_at': ends, 'override.kind': kind}[answer.data.field];
        if (bad) bad.setAttribute('aria-invalid', 'true');
        return;
      }
      for (const input of [value, reason, starts, ends]) { input.value = ''; input.removeAttribute('aria-invalid'); }
      say('Override set: ' + answer.data.override.kind + ' on ' + answer.data.override.target + '.', 'ok');
      done();
    }},
      fixedSku ? null : field('Scope', scope),
      fixedSku ? null : field('SKU or category', target),
      field('Kind', kind), field('Value', value), field('Starts (empty: now)', starts),
      field('Ends (empty: until cleared)', ends), field('Reason', reason),
      el('div', {class: 'field check'}, replace, el('label', {for: replace.id, text: 'Replace conflicting overrides'})),
      el('div', {class: 'actions'}, el('button', {type: 'submit', text: 'Set override'})), error);
    return form;
  }

  /** The form that opens an incentive; `fixedSku` scopes it to one SKU. */
  function incentiveForm(fixedSku, done) {
    const id = (name) => 'inc-' + name;
    const sku = el('input', {id: id('sku'), value: fixedSku || '', required: true});
    const bonus = el('input', {id: id('bonus'), inputmode: 'decimal', placeholder: '0.02 = 2 points', required: true});
    const hours = el('input', {id: id('hours'), type: 'number', min: '1', step: '1', value: '24', required: true});
    const spend = el('input', {id: id('spend'), inputmode: 'decimal'});
    const units = el('input', {id: id('units'), inputmode: 'decimal'});
    const reason = el('input', {id: id('reason'), required: true, maxlength: 1024});
    const error = el('p', {class: 'error', role: 'alert'});
    return el('form', {class: 'grid', id: 'incentive-form', onsubmit: async (event) => {
      event.preventDefault();
      error.textContent = '';
      const answer = await api('POST', '/api/incentives', {sku: sku.value, bonus_rate: bonus.value,
        duration_minutes: Math.round(Number(hours.value) * 60), budget_spend: spend.value,
        budget_units: units.value, reason: reason.value});
      if (!answer.ok) { error.textContent = problem(answer); return; }
      say('Incentive opened on ' + answer.data.incentive.sku + '.', 'ok');
      done();
    }},
      fixedSku ? null : field('SKU', sku), field('Bonus rate', bonus), field('Hours', hours),
      field('Spend budget (optional)', spend), field('Unit budget (optional)', units),
      field('Reason', reason),
      el('div', {class: 'actions'}, el('button', {type: 'submit', text: 'Start incentive'})), error);
  }

  async function skuPage(sku) {
    if (!sku) { location.hash = '#/rates'; return; }
    const body = el('div', {});
    page('SKU ' + sku, body);
    // What the page last read, and the changes streamed since: a reload that read older
    // figures than the stream already showed keeps the newer ones.
    let history = [];
    let streamed = null;
    const points = () => {
      const last = history.length ? history[history.length - 1].version : 0;
      const newer = streamed && streamed.version > last
        ? [{version: streamed.version, rate: streamed.effective_rate, band: streamed.band, computed_at: streamed.computed_at}]
        : [];
      return history.concat(newer);
    };
    const newest = (card) => (streamed && (!card || streamed.version > card.version) ? streamed : card);
    const load = async () => {
      const [detail, past] = await Promise.all([
        api('GET', '/api/skus/' + encodeURIComponent(sku)),
        api('GET', '/api/skus/' + encodeURIComponent(sku) + '/history'),
      ]);
      if (!detail.ok) { body.replaceChildren(el('p', {class: 'error', role: 'alert', text: problem(detail)})); return; }
      const e = detail.data.explanation;
      history = past.ok ? past.data.points : [];
      body.replaceChildren(
        el('div', {class: 'columns'},
          el('section', {class: 'card', 'aria-labelledby': 'h-card'}, el('h2', {id: 'h-card', text: 'Rate'}), cardSection(newest(e.card))),
          el('section', {class: 'card', 'aria-labelledby': 'h-inputs'}, el('h2', {id: 'h-inputs', text: 'Inputs'}), inputsSection(e.inputs, e.status))),
        el('section', {class: 'card', 'aria-labelledby': 'h-history'}, el('h2', {id: 'h-history', text: 'Rate history'}),
          el('div', {id: 'sku-chart'}, chart(points()))),
        el('section', {class: 'card', 'aria-labelledby': 'h-ov'}, el('h2', {id: 'h-ov', text: 'Overrides touching ' + sku}),
          table('Overrides', OVERRIDE_HEADINGS, overrideRows(detail.data.overrides, load), 'No override has touched this SKU.'),
          el('h3', {text: 'Set an override on ' + sku}), overrideForm(sku, load)),
        el('section', {class: 'card', 'aria-labelledby': 'h-inc'}, el('h2', {id: 'h-inc', text: 'Incentives on ' + sku}),
          table('Incentives', INCENTIVE_HEADINGS, incentiveRows(detail.data.incentives, load), 'No incentive has run on this SKU.'),
          el('h3', {text: 'Start an incentive on ' + sku}), incentiveForm(sku, load)));
    };
    await load();
    openStream('?sku=' + encodeURIComponent(sku), ({card}) => {
      if (card.sku !== sku || (streamed && streamed.version >= card.version)) return;
      if (history.length && history[history.length - 1].version >= card.version) return;
      if (streamed) {
        history = history.concat([{version: streamed.version, rate: streamed.effective_rate, band: streamed.band, computed_at: streamed.computed_at}]);
      }
      streamed = card;
      const holder = document.getElementById('rate-card');
      if (holder) {
        const fresh = cardSection(card);
        fresh.classList.add('changed');
        holder.replaceWith(fresh);
      }
      const plot = document.getElementById('sku-chart');
      if (plot) plot.replaceChildren(chart(points()));
      say('Rate of ' + sku + ' is now ' + pct(card.effective_rate) + '.', 'ok');
    });
  }

  // ---- overrides -----------------------------------------------------------------------

  async function overridesPage() {
    const body = el('div', {});
    page('Overrides', body);
    const filter = {sku: '', all: false};
    const load = async () => {
      const params = new URLSearchParams({sku: filter.sku, all: filter.all});
      const [list, audit] = await Promise.all([
        api('GET', '/api/overrides?' + params),
        api('GET', '/api/overrides/audit?' + new URLSearchParams({sku: filter.sku})),
      ]);
      if (!list.ok) { body.replaceChildren(el('p', {class: 'error', role: 'alert', text: problem(list)})); return; }
      const sku = el('input', {id: 'ov-filter-sku', type: 'search', value: filter.sku});
      const all = el('input', {id: 'ov-filter-all', type: 'checkbox', checked: filter.all});
      body.replaceChildren(
        el('form', {class: 'filters', role: 'search', onsubmit: (event) => {
          event.preventDefault(); filter.sku = sku.value.trim(); filter.all = all.checked; load();
        }}, field('SKU', sku),
          el('div', {class: 'field check'}, all, el('label', {for: all.id, text: 'Include ended and cleared'})),
          el('button', {type: 'submit', text: 'Show'})),
        el('section', {class: 'card', 'aria-labelledby': 'h-list'}, el('h2', {id: 'h-list', text: filter.all ? 'All overrides' : 'Active overrides'}),
          table('Overrides', OVERRIDE_HEADINGS, overrideRows(list.data.overrides, load), 'No override.')),
        el('section', {class: 'card', 'aria-labelledby': 'h-set'}, el('h2', {id: 'h-set', text: 'Set an override'}), overrideForm(null, load)),
        el('section', {class: 'card', 'aria-labelledby': 'h-audit'}, el('h2', {id: 'h-audit', text: 'History'}),
          audit.ok ? table('Override history', ['When', 'Action', 'Override', 'Reason', 'By'],
            audit.data.entries.map((a) => {
              const o = a.after || a.before || {};
              return el('tr', {}, el('td', {text: when(a.at)}), el('td', {text: a.action}),
                el('td', {text: o.kind + ' ' + (o.value || '') + ' on ' + o.scope + ' ' + o.target}),
                el('td', {text: orDash(a.reason)}), el('td', {text: a.author}));
            }), 'No change recorded.') : el('p', {class: 'error', text: problem(audit)})));
    };
    await load();
  }

  // ---- incentives ----------------------------------------------------------------------

  async function incentivesPage() {
    const body = el('div', {});
    page('Incentives', body);
    let state = 'active';
    const load = async () => {
      const answer = await api('GET', '/api/incentives?' + new URLSearchParams({state}));
      if (!answer.ok) { body.replaceChildren(el('p', {class: 'error', role: 'alert', text: problem(answer)})); return; }
      const choose = el('select', {id: 'inc-state', onchange: () => { state = choose.value; load(); }},
        [['active', 'Active'], ['ended', 'Ended'], ['', 'All']].map(([v, t]) => el('option', {value: v, text: t, selected: v === state})));
      body.replaceChildren(
        el('div', {class: 'filters'}, field('Show', choose)),
        el('section', {class: 'card', 'aria-labelledby': 'h-incs'}, el('h2', {id: 'h-incs', text: 'Incentives'}),
          table('Incentives', INCENTIVE_HEADINGS, incentiveRows(answer.data.incentives, load), 'No incentive.')),
        el('section', {class: 'card', 'aria-labelledby': 'h-trig'}, el('h2', {id: 'h-trig', text: 'Start an incentive'}), incentiveForm(null, load)));
    };
    await load();
  }

  // ---- partners ------------------------------------------------------------------------

  async function partnersPage(selected) {
    const body = el('div', {});
    page('Partners', body);
    const answer = await api('GET', '/api/partners');
    if (!answer.ok) { body.replaceChildren(el('p', {class: 'error', role: 'alert', text: problem(answer)})); return; }
    const partners = answer.data.partners;
    const dead = await Promise.all(partners.map((p) =>
      api('GET', '/api/partners/' + encodeURIComponent(p.id) + '/deliveries?status=dead')
        .then((a) => (a.ok ? a.data.deliveries.length : null))));
    const list = table('Partners', ['Partner', 'Endpoint', 'Subscribed to', 'Enabled', 'Dead letters'],
      partners.map((p, n) => el('tr', {'data-partner': p.id},
        el('td', {}, el('a', {href: '#/partners/' + encodeURIComponent(p.id), text: p.name + ' (' + p.id + ')'})),
        el('td', {class: 'wrap', text: p.endpoint_url}),
        el('td', {text: [p.filters.skus.length ? p.filters.skus.length + ' SKUs' : '',
          p.filters.categories.join(', '), p.filters.event_types.join(', ')].filter(Boolean).join(' · ') || 'everything'}),
        el('td', {text: p.enabled ? 'yes' : 'no'}),
        el('td', {class: 'num' + (dead[n] ? ' warn' : ''), text: orDash(dead[n])}))), 'No partner is registered.');
    body.replaceChildren(el('section', {class: 'card'}, el('h2', {text: 'Subscriptions'}), list));
    const partner = partners.find((p) => p.id === selected);
    if (!partner) return;
    const section = el('section', {class: 'card', id: 'deliveries', 'aria-labelledby': 'h-del'});
    body.append(section);
    let status = '';
    const load = async () => {
      const deliveries = await api('GET', '/api/partners/' + encodeURIComponent(partner.id) + '/deliveries?' + new URLSearchParams({status}));
      const choose = el('select', {id: 'del-status', onchange: () => { status = choose.value; load(); }},
        [['', 'any'], ['dead', 'dead'], ['retrying', 'retrying'], ['pending', 'pending'], ['delivered', 'delivered']]
          .map(([v, t]) => el('option', {value: v, text: t, selected: v === status})));
      const redeliver = async (ids) => {
        const answer = await api('POST', '/api/partners/' + encodeURIComponent(partner.id) + '/redeliver', {delivery_ids: ids});
        if (!answer.ok) { say(problem(answer), 'bad'); return; }
        say(answer.data.requeued + (answer.data.requeued === 1 ? ' delivery' : ' deliveries') + ' queued again for ' + partner.name + '.', 'ok');
        load();
      };
      const rows = deliveries.ok ? deliveries.data.deliveries.map((d) => el('tr', {'data-delivery': d.id},
        el('td', {text: when(d.created_at)}), el('td', {text: d.event_type}),
        el('td', {class: 'wrap', text: d.skus.join(', ')}), el('td', {class: 'status-' + d.status, text: d.status}),
        el('td', {class: 'num', text: d.attempts}),
        el('td', {text: orDash(d.last_error)}),
        el('td', {}, d.status === 'dead'
          ? el('button', {type: 'button', class: 'secondary', text: 'Redeliver', onclick: () => redeliver([d.id])}) : null))) : [];
      section.replaceChildren(el('h2', {id: 'h-del', text: 'Deliveries to ' + partner.name}),
        el('div', {class: 'filters'}, field('Status', choose),
          el('button', {type: 'button', text: 'Redeliver all dead letters', onclick: () => redeliver([])})),
        deliveries.ok ? table('Deliveries', ['Queued', 'Event', 'SKUs', 'Status', 'Attempts', 'Last error', ''], rows, 'No delivery.')
          : el('p', {class: 'error', text: problem(deliveries)}));
    };
    await load();
  }

  // ---- what-if -------------------------------------------------------------------------

  /** What the what-if form last held and the last report, kept while the page is away. */
  const whatif = {
    candidate: '', baseline: '', since: '', until: '', skus: '', category: '', elasticity: '',
    result: null,
  };

  /** Stops a what-if run in progress; dropping its answer cancels the run on the server. */
  function cancelRun() {
    if (console_.run) {
      console_.run.abort();
      console_.run = null;
    }
  }

  /** Money as the report's figures are read: two decimals, thousands grouped. */
  function money(value) {
    if (value === null || value === undefined || value === '') return '–';
    const [whole, cents] = Number(value).toFixed(2).split('.');
    return whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',') + '.' + cents;
  }
  /** The change from `base` to `cand` as shown: each rounded first, so a row adds up. */
  function change(base, cand, decimals) {
    const round = (v) => Math.round(Number(v) * 10 ** decimals) / 10 ** decimals;
    const d = round(cand) - round(base);
    const text = decimals ? money(d) : String(d);
    return d > 0 ? '+' + text : text;
  }
  /** A datetime-local value of `date` in the browser's time zone. */
  function localInput(date) {
    const pad = (n) => String(n).padStart(2, '0');
    return date.getFullYear() + '-' + pad(date.getMonth() + 1) + '-' + pad(date.getDate()) +
      'T' + pad(date.getHours()) + ':' + pad(date.getMinutes());
  }

  const HEADLINE = [
    ['commission_spend', 'Commission spend', 2],
    ['margin_after_commission', 'Margin after commission', 2],
    ['scarce_spend', 'Spend on SKUs selling out (low cover)', 2],
    ['overstock_spend', 'Spend on overstock', 2],
    ['rate_changes', 'Rate changes (partner deliveries)', 0],
    ['cuts_blocked', 'Cuts blocked by network terms', 0],
    ['incentives_opened', 'Flash incentives opened', 0],
    ['incentive_spend', 'Flash incentive bonus spend', 2],
  ];

  function headline(figures) {
    // Only the figures this report carries.
    const rows = HEADLINE.filter(([key]) => key in figures.baseline).map(([key, label, decimals]) => {
      const base = figures.baseline[key], cand = figures.candidate[key];
      const show = (v) => (decimals ? money(v) : String(v));
      return el('tr', {'data-figure': key},
        el('th', {scope: 'row', text: label}),
        el('td', {class: 'num baseline', text: show(base)}),
        el('td', {class: 'num candidate', text: show(cand)}),
        el('td', {class: 'num change', text: change(base, cand, decimals)}));
    });
    return el('div', {class: 'scroll'}, el('table', {id: 'wi-headline'},
      el('caption', {text: 'Units sold ' + money(figures.units_sold).replace(/\.00$/, '') +
        ' · revenue ' + money(figures.revenue) + ' (observed, the same under both policies)'}),
      el('thead', {}, el('tr', {}, el('th', {scope: 'col', text: 'Figure'}),
        ['Baseline', 'Candidate', 'Change'].map((h) => el('th', {scope: 'col', class: 'num', text: h})))),
      el('tbody', {}, rows)));
  }

  function categoryTable(categories) {
    const rows = Object.entries(categories).map(([name, f]) => el('tr', {'data-category': name},
      el('th', {scope: 'row', text: name}),
      el('td', {class: 'num', text: money(f.units_sold).replace(/\.00$/, '')}),
      el('td', {class: 'num', text: money(f.revenue)}),
      el('td', {class: 'num baseline', text: money(f.baseline.commission_spend)}),
      el('td', {class: 'num candidate', text: money(f.candidate.commission_spend)}),
      el('td', {class: 'num change', text: change(f.baseline.commission_spend, f.candidate.commission_spend, 2)}),
      el('td', {class: 'num', text: money(f.baseline.margin_after_commission)}),
      el('td', {class: 'num', text: money(f.candidate.margin_after_commission)}),
      el('td', {class: 'num', text: f.baseline.rate_changes + ' → ' + f.candidate.rate_changes})));
    if (!rows.length) return el('p', {class: 'empty', text: 'No category had sales in the range.'});
    return el('div', {class: 'scroll'}, el('table', {id: 'wi-categories'},
      el('caption', {class: 'visually-hidden', text: 'Figures per category'}),
      el('thead', {}, el('tr', {}, el('th', {scope: 'col', text: 'Category'}),
        ['Units sold', 'Revenue', 'Spend, baseline', 'Spend, candidate', 'Spend change',
          'Margin, baseline', 'Margin, candidate', 'Rate changes'].map((h) => el('th', {scope: 'col', class: 'num', text: h})))),
      el('tbody', {}, rows)));
  }

  function resultSection(result) {
    const report = result.report;
    const history = report.history || {};
    const label = (p) => (p ? p.program + ' (' + p.mode + ')' : '–');
    const estimate = report.estimate;
    return el('section', {class: 'card', id: 'wi-result', 'aria-labelledby': 'h-wi-result'},
      el('h2', {id: 'h-wi-result', text: 'Result'}),
      el('dl', {class: 'inputs', id: 'wi-summary'},
        [['Baseline', label(report.baseline_policy) + ' · ' + result.baseline_source],
          ['Candidate', label(report.candidate_policy)],
          ['Replayed', result.events + ' archived events · ' + orDash(history.skus) + ' SKUs · ' +
            orDash(history.stock_readings) + ' stock readings'],
          ['Data from', when(history.from) + ' to ' + when(history.until)],
          ['Units sold before a price was known', report.unpriced_units]]
          .map(([name, value]) => [el('dt', {text: name}), el('dd', {text: orDash(value)})])),
      el('h3', {text: 'Whole program'}),
      headline(report.program),
      estimate ? el('p', {class: 'notice', id: 'wi-estimate',
        text: 'Estimate, not observed: with an elasticity of ' + estimate.elasticity + ' the candidate might have sold ' +
          money(estimate.estimated_candidate_units) + ' units (observed ' + money(estimate.observed_units) +
          '), paying ' + money(estimate.estimated_candidate_spend) + ' in commission for a margin of ' +
          money(estimate.estimated_candidate_margin) + '.'}) : null,
      el('h3', {text: 'Per category'}),
      categoryTable(report.categories || {}),
      el('h3', {text: 'Gaps in the stock data'}),
      result.gaps.length
        ? el('div', {}, el('p', {class: 'notice', text: 'The figures do not cover these stretches without stock data:'}),
          el('ul', {id: 'wi-gaps'}, result.gaps.map((g) => el('li', {text: when(g.from) + ' – ' + when(g.until)}))))
        : el('p', {class: 'empty', id: 'wi-gaps', text: 'None: stock data covers the whole range.'}));
  }

  async function whatifPage() {
    const saved = whatif;
    if (!saved.since) saved.since = localInput(new Date(Date.now() - 7 * 86400e3));
    const area = (id, rows, value, required) =>
      el('textarea', {id, rows, spellcheck: 'false', required, 'aria-describedby': id + '-hint'}, value);
    const candidate = area('wi-candidate', 14, saved.candidate, true);
    const file = el('input', {id: 'wi-candidate-file', type: 'file', accept: '.toml,text/plain'});
    const baseline = area('wi-baseline', 6, saved.baseline, false);
    const since = el('input', {id: 'wi-since', type: 'datetime-local', value: saved.since, required: true});
    const until = el('input', {id: 'wi-until', type: 'datetime-local', value: saved.until});
    const skus = el('input', {id: 'wi-skus', value: saved.skus, placeholder: 'SKU-1, SKU-2'});
    const category = el('input', {id: 'wi-category', value: saved.category});
    const elasticity = el('input', {id: 'wi-elasticity', inputmode: 'decimal', value: saved.elasticity, placeholder: '0.5'});
    const fields = {candidate_policy: candidate, baseline_policy: baseline, since, until, skus, category, elasticity};
    const run = el('button', {type: 'submit', id: 'wi-run', text: 'Run what-if'});
    const cancel = el('button', {type: 'button', id: 'wi-cancel', class: 'secondary', disabled: true, text: 'Cancel',
      onclick: () => { cancelRun(); }});
    const error = el('div', {class: 'error', id: 'wi-error', role: 'alert'});
    const bar = el('progress', {id: 'wi-progress', max: 1, value: 0, 'aria-labelledby': 'wi-progress-label',
      'aria-describedby': 'wi-progress-text'});
    const barText = el('p', {id: 'wi-progress-text', class: 'muted', 'aria-live': 'polite'});
    const progress = el('div', {class: 'progress', id: 'wi-progress-block', hidden: true},
      el('label', {id: 'wi-progress-label', for: 'wi-progress', text: 'Progress'}), bar, barText);
    const result = el('div', {id: 'wi-result-holder'}, saved.result ? resultSection(saved.result) : null);
    const hint = (id, text) => el('p', {id: id + '-hint', class: 'hint', text});

    file.addEventListener('change', async () => {
      if (file.files.length) candidate.value = await file.files[0].text();
    });
    const keep = () => {
      Object.assign(saved, {candidate: candidate.value, baseline: baseline.value, since: since.value,
        until: until.value, skus: skus.value, category: category.value, elasticity: elasticity.value});
    };
    const show = (done, total, phase) => {
      bar.max = Math.max(total, 1);
      bar.value = Math.min(done, bar.max);
      const text = phase === 'reporting'
        ? 'Adding up the figures (' + done + ' of ' + total + ' events replayed).'
        : done + ' of ' + total + ' events replayed.';
      bar.setAttribute('aria-valuetext', text);
      barText.textContent = text;
    };
    const fail = (data, status) => {
      const message = (data && data.error) || ('the what-if run failed (' + status + ')');
      error.replaceChildren(el('p', {text: data && data.field ? message + ' (' + data.field + ')' : message}));
      const key = data && data.field && data.field.replace(/\[\d+\]$/, '');
      const bad = key && fields[key];
      if (bad) { bad.setAttribute('aria-invalid', 'true'); bad.focus(); }
    };

    const form = el('form', {class: 'grid', id: 'whatif-form', onsubmit: async (event) => {
      event.preventDefault();
      keep();
      cancelRun();
      error.replaceChildren();
      for (const input of Object.values(fields)) input.removeAttribute('aria-invalid');
      const iso = (input) => (input.value ? new Date(input.value).toISOString() : null);
      const body = {candidate_policy: candidate.value, baseline_policy: baseline.value, since: iso(since),
        until: iso(until), skus: skus.value.split(/[\s,]+/).filter(Boolean), category: category.value,
        elasticity: elasticity.value};
      const controller = new AbortController();
      console_.run = controller;
      run.disabled = true;
      cancel.disabled = false;
      progress.hidden = false;
      show(0, 0, 'replaying');
      barText.textContent = 'Reading the archive…';
      let finished = false;
      try {
        const response = await fetch('/api/whatif', {method: 'POST', credentials: 'same-origin',
          signal: controller.signal,
          headers: {'Content-Type': 'application/json', Accept: 'application/x-ndjson',
            'X-CSRF-Token': console_.session ? console_.session.csrf : ''},
          body: JSON.stringify(body)});
        if (!response.ok) {
          let data = {};
          try { data = await response.json(); } catch (err) { data = {}; }
          if (response.status === 401) { showSignIn('Your session ended; sign in again.'); return; }
          fail(data, response.status);
          progress.hidden = true;
          return;
        }
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffered = '';
        const take = (line) => {
          if (!line.trim()) return;
          const event = JSON.parse(line);
          if (event.event === 'progress') show(event.done, event.total, event.phase);
          else if (event.event === 'result') {
            finished = true;
            saved.result = event;
            bar.value = bar.max;
            bar.setAttribute('aria-valuetext', 'Done');
            barText.textContent = 'Done: ' + event.events + ' archived events replayed.';
            result.replaceChildren(resultSection(event));
            say('What-if finished.', 'ok');
          } else if (event.event === 'error') {
            finished = true;
            fail(event, event.status);
          }
        };
        for (;;) {
          const {done, value} = await reader.read();
          if (done) break;
          buffered += decoder.decode(value, {stream: true});
          const lines = buffered.split('\n');
          buffered = lines.pop();
          lines.forEach(take);
        }
        take(buffered + decoder.decode());
        if (!finished) fail({error: 'the what-if run ended without a report'}, 0);
      } catch (err) {
        if (err.name === 'AbortError') {
          barText.textContent = 'Cancelled.';
          if (document.getElementById('whatif-form')) say('What-if cancelled.', 'ok');
        } else {
          fail({error: 'the console cannot be reached'}, 0);
        }
      } finally {
        if (console_.run === controller) console_.run = null;
        run.disabled = false;
        cancel.disabled = true;
      }
    }},
      el('div', {class: 'field wide'}, el('label', {for: candidate.id, text: 'Candidate policy (TOML)'}), candidate,
        hint('wi-candidate', 'The policy to try, as policy.file takes it.')),
      el('div', {class: 'field wide'}, el('label', {for: file.id, text: 'Or load the candidate from a file'}), file),
      el('div', {class: 'field wide'}, el('label', {for: baseline.id, text: 'Baseline policy (TOML, optional)'}), baseline,
        hint('wi-baseline', 'Empty: the live policy of the process that keeps the archive.')),
      field('From', since), field('Until (empty: now)', until),
      field('SKUs (optional, comma separated)', skus), field('Category (optional)', category),
      field('Elasticity (optional estimate)', elasticity),
      el('div', {class: 'actions wide'}, run, cancel), error);
    page('What-if',
      el('section', {class: 'card', 'aria-labelledby': 'h-wi-form'},
        el('h2', {id: 'h-wi-form', text: 'Try a policy on what happened'}),
        el('p', {class: 'muted', text: 'Replays the archived stock and product data of the range under the baseline ' +
          'and the candidate policy, and compares what each would have paid.'}),
        form, progress),
      result);
  }

  // ---- start ---------------------------------------------------------------------------

  document.addEventListener('DOMContentLoaded', async () => {
    document.getElementById('sign-in-form').addEventListener('submit', signIn);
    document.getElementById('sign-out').addEventListener('click', signOut);
    window.addEventListener('hashchange', route);
    const answer = await api('GET', '/api/session');
    if (answer.ok) signedIn(answer.data);
    else showSignIn();
  });
})();
