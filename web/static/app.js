/* Progressive enhancement for the server-rendered pages. Every page works without this file:
   it adds the live unread badge, delivery progress, recipient search pickers and small comforts.
   Only GET requests to the JSON API (session cookie, same origin); all changes go through the
   pages' own forms, which carry the CSRF token. No inline scripts (the pages' CSP forbids them). */
(function () {
  "use strict";

  document.documentElement.classList.add("js");

  function getJSON(url) {
    return fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    }).then(function (resp) {
      if (!resp.ok) {
        throw new Error("HTTP " + resp.status);
      }
      return resp.json();
    });
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      node.setAttribute(key, attrs[key]);
    });
    if (text !== undefined) {
      node.textContent = text; // never innerHTML: names and subjects are user data
    }
    return node;
  }

  /* Call `task` every `ms` while the page is visible. `task` returns a promise; resolving to
     false stops the polling for good. Paused while document.hidden, resumed (at once) on return;
     never two requests at the same time. */
  function poll(task, ms) {
    var timer = null;
    var busy = false;
    var stopped = false;

    function schedule() {
      if (!stopped && !busy && timer === null && !document.hidden) {
        timer = window.setTimeout(run, ms);
      }
    }

    function run() {
      timer = null;
      if (stopped || busy || document.hidden) {
        return;
      }
      busy = true;
      Promise.resolve()
        .then(task)
        .then(
          function (more) {
            busy = false;
            if (more === false) {
              stopped = true;
            }
            schedule();
          },
          function () {
            busy = false;
            schedule();
          }
        );
    }

    document.addEventListener("visibilitychange", function () {
      if (document.hidden) {
        window.clearTimeout(timer);
        timer = null;
      } else if (!stopped && timer === null && !busy) {
        run();
      }
    });
    schedule();
  }

  /* Header: the unread badge and the counts per folder from /unread-counts (one query on the
     server), every 8 s: a change shows within 10 s, the request's own time included. */
  function initUnreadBadge() {
    var badge = document.querySelector("[data-unread-badge]");
    if (!badge) {
      return;
    }
    var count = badge.querySelector("[data-unread-count]");
    var folders = document.querySelectorAll("[data-unread-folder]");
    poll(function () {
      return getJSON(badge.getAttribute("data-url")).then(function (body) {
        var n = Number(body.total) || 0;
        count.textContent = String(n);
        badge.hidden = n === 0;
        Array.prototype.forEach.call(folders, function (item) {
          var key = item.getAttribute("data-unread-folder");
          var k = Number(body[key]) || 0;
          var num = item.querySelector("[data-unread-folder-count]");
          num.textContent = String(k);
          num.classList.toggle("zero", k === 0);
          if (key === "feedback") {
            item.hidden = !body.showFeedback;
          }
        });
      });
    }, 8000);
  }

  /* A conversation's delivery progress, polled every 2 s until DELIVERED or FAILED. */
  function deliveryText(d) {
    if (d.state === "QUEUED" || d.total === null || d.total === undefined) {
      return "Queued — counting recipients…";
    }
    if (d.state === "DELIVERING") {
      return "Delivering — " + d.delivered + " of " + d.total + " delivered";
    }
    if (d.state === "DELIVERED") {
      return d.total === 1 ? "Delivered to 1 recipient" : "Delivered to all " + d.total + " recipients";
    }
    return "Failed — " + d.delivered + " of " + d.total + " delivered, " + d.failed + " not reached";
  }

  function initDelivery() {
    var box = document.querySelector("[data-delivery]");
    if (!box) {
      return;
    }
    var finished = ["DELIVERED", "FAILED"];
    if (finished.indexOf(box.getAttribute("data-state")) !== -1) {
      return;
    }
    var bar = box.querySelector("[data-delivery-bar]");
    var text = box.querySelector("[data-delivery-text]");
    poll(function () {
      return getJSON(box.getAttribute("data-url")).then(function (d) {
        box.setAttribute("data-state", d.state);
        if (d.total === null || d.total === undefined) {
          bar.removeAttribute("value"); // indeterminate until the recipients are counted
        } else {
          bar.max = Math.max(d.total, 1);
          bar.value = d.total ? d.delivered : 1;
        }
        text.textContent = deliveryText(d);
        return finished.indexOf(d.state) === -1;
      });
    }, 2000);
  }

  /* Recipient pickers: a search box whose results add ids to the field's text input, and chips
     showing what is chosen. The text input stays the form's real value (and keeps working by
     hand); chips follow it. */
  var ID_SPLIT = /[\s,;]+/;

  function ids(input, single) {
    if (single) {
      var v = input.value.trim(); // one id or one name, which may hold spaces
      return v ? [v] : [];
    }
    return input.value.split(ID_SPLIT).filter(Boolean);
  }

  function initPicker(box, index) {
    var input = box.querySelector("input");
    var url = box.getAttribute("data-search-url");
    var key = box.getAttribute("data-result-key");
    var minChars = Number(box.getAttribute("data-min-chars") || "1");
    var single = box.hasAttribute("data-single");
    var noun = box.getAttribute("data-noun") || "items";
    var names = {}; // id -> display name, from search results
    var baseId = input.id || "picker-" + index;

    var searchWrap = el("div", { class: "picker-search" });
    var searchLabel = el("label", { for: baseId + "-search" }, "Search " + noun);
    searchLabel.className = "visually-hidden";
    var search = el("input", {
      type: "search",
      id: baseId + "-search",
      autocomplete: "off",
      placeholder: "Search " + noun + "…",
      "aria-controls": baseId + "-results",
    });
    searchWrap.appendChild(searchLabel);
    searchWrap.appendChild(search);
    var status = el("p", { class: "picker-status", "aria-live": "polite", id: baseId + "-status" });
    var results = el("ul", { class: "picker-results", id: baseId + "-results", "aria-label": "Search results" });
    var chips = el("ul", { class: "chips", "aria-label": "Chosen " + noun });

    input.insertAdjacentElement("beforebegin", searchWrap);
    searchWrap.insertAdjacentElement("afterend", status);
    status.insertAdjacentElement("afterend", results);
    input.insertAdjacentElement("afterend", chips);

    if (box.hasAttribute("data-browse-url")) {
      initTree(box, searchWrap, add);
    }

    function add(id, name) {
      names[id] = name;
      var current = single ? [] : ids(input, false);
      if (current.indexOf(id) === -1) {
        current.push(id);
      }
      input.value = current.join(" ");
      renderChips();
      status.textContent = name + " added.";
      changed();
    }

    // Tell the live recipient count (which listens for input events) the value has changed.
    function changed() {
      input.dispatchEvent(new Event("input", { bubbles: true }));
    }

    function remove(id) {
      input.value = ids(input, single)
        .filter(function (x) {
          return x !== id;
        })
        .join(" ");
      renderChips();
      changed();
      status.textContent = (names[id] || id) + " removed.";
      search.focus();
    }

    function renderChips() {
      chips.textContent = "";
      ids(input, single).forEach(function (id) {
        var chip = el("li", { class: "chip" });
        chip.appendChild(el("span", {}, names[id] || id));
        if (names[id]) {
          chip.appendChild(el("span", { class: "picker-id" }, id));
        }
        var btn = el("button", { type: "button", "aria-label": "Remove " + (names[id] || id) }, "×");
        btn.addEventListener("click", function () {
          remove(id);
        });
        chip.appendChild(btn);
        chips.appendChild(chip);
      });
    }

    // Ids typed by hand or kept from a rejected submission: look their names up once.
    function resolveNames() {
      ids(input, single).forEach(function (id) {
        if (names[id]) {
          return;
        }
        getJSON(url + "?query=" + encodeURIComponent(id))
          .then(function (body) {
            (body[key] || []).forEach(function (item) {
              if (item.id === id) {
                names[id] = item.displayName;
                renderChips();
              }
            });
          })
          .catch(function () {});
      });
    }

    var pending = null;
    var seq = 0;
    function runSearch() {
      var q = search.value.trim();
      results.textContent = "";
      if (q.length < minChars) {
        status.textContent = q ? "Type at least " + minChars + " characters." : "";
        return;
      }
      var mine = ++seq;
      getJSON(url + "?query=" + encodeURIComponent(q))
        .then(function (body) {
          if (mine !== seq) {
            return; // a newer search has started
          }
          var items = body[key] || [];
          status.textContent = items.length ? items.length + " found." : "Nothing found.";
          items.forEach(function (item) {
            var li = el("li");
            var btn = el("button", { type: "button" });
            btn.appendChild(el("span", {}, item.displayName + " "));
            btn.appendChild(el("span", { class: "picker-id" }, item.username ? item.username + " · " + item.id : item.id));
            btn.addEventListener("click", function () {
              add(item.id, item.displayName);
              results.textContent = "";
              search.value = "";
              search.focus();
            });
            li.appendChild(btn);
            results.appendChild(li);
          });
        })
        .catch(function () {
          status.textContent = "Search is unavailable; type the ids instead.";
        });
    }

    search.addEventListener("input", function () {
      window.clearTimeout(pending);
      pending = window.setTimeout(runSearch, 250);
    });
    search.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter") {
        ev.preventDefault(); // Enter searches; it does not submit the whole message
        window.clearTimeout(pending);
        runSearch();
      } else if (ev.key === "ArrowDown") {
        var first = results.querySelector("button");
        if (first) {
          ev.preventDefault();
          first.focus();
        }
      } else if (ev.key === "Escape") {
        search.value = "";
        results.textContent = "";
      }
    });
    results.addEventListener("keydown", function (ev) {
      var buttons = Array.prototype.slice.call(results.querySelectorAll("button"));
      var at = buttons.indexOf(document.activeElement);
      if (ev.key === "ArrowDown" && at < buttons.length - 1) {
        ev.preventDefault();
        buttons[at + 1].focus();
      } else if (ev.key === "ArrowUp") {
        ev.preventDefault();
        (at > 0 ? buttons[at - 1] : search).focus();
      } else if (ev.key === "Escape") {
        results.textContent = "";
        search.focus();
      }
    });
    // Chips follow each keystroke: drawn only on "change" (which fires on the mousedown of a
    // button after typing), the new chip row would push that button away before the mouseup,
    // and the click would be lost.
    input.addEventListener("input", renderChips);
    input.addEventListener("change", function () {
      renderChips();
      resolveNames();
    });
    renderChips();
    resolveNames();
  }

  /* Browsing the organisation-unit tree: roots first, children loaded when a node is opened. */
  function initTree(box, after, add) {
    var toggle = el("button", { type: "button", class: "button small secondary", "aria-expanded": "false" }, "Browse the tree");
    var panel = el("div", { class: "ou-tree", hidden: "" });
    after.appendChild(toggle);
    after.insertAdjacentElement("afterend", panel);
    var loaded = false;
    var childrenUrl = box.getAttribute("data-children-url");

    function nodeList(units, canOpen) {
      var ul = el("ul", { role: "list" });
      units.forEach(function (ou) {
        var li = el("li");
        var row = el("div", { class: "ou-node" });
        var hasChildren = canOpen(ou);
        var sub = null;
        if (hasChildren) {
          var tw = el("button", { type: "button", class: "twisty", "aria-expanded": "false", "aria-label": "Show units in " + ou.displayName }, "+");
          tw.addEventListener("click", function () {
            var open = tw.getAttribute("aria-expanded") === "true";
            if (open) {
              tw.setAttribute("aria-expanded", "false");
              tw.textContent = "+";
              sub.hidden = true;
              return;
            }
            tw.setAttribute("aria-expanded", "true");
            tw.textContent = "−";
            if (sub) {
              sub.hidden = false;
              return;
            }
            getJSON(childrenUrl.replace("__UID__", encodeURIComponent(ou.id))).then(function (body) {
              sub = nodeList(body.organisationUnits || [], function (c) {
                return c.childCount > 0;
              });
              li.appendChild(sub);
            });
          });
          row.appendChild(tw);
        } else {
          row.appendChild(el("span", { class: "twisty-spacer" }));
        }
        row.appendChild(el("span", { class: "ou-name" }, ou.displayName));
        var addBtn = el("button", { type: "button", class: "button small secondary" }, "Add");
        addBtn.appendChild(el("span", { class: "visually-hidden" }, " " + ou.displayName));
        addBtn.addEventListener("click", function () {
          add(ou.id, ou.displayName);
        });
        row.appendChild(addBtn);
        li.appendChild(row);
        ul.appendChild(li);
      });
      return ul;
    }

    toggle.addEventListener("click", function () {
      var open = toggle.getAttribute("aria-expanded") === "true";
      toggle.setAttribute("aria-expanded", open ? "false" : "true");
      panel.hidden = open;
      if (!open && !loaded) {
        loaded = true;
        getJSON(box.getAttribute("data-browse-url")).then(function (body) {
          // Roots carry no child count; any root may be opened.
          panel.appendChild(nodeList(body.organisationUnits || [], function () {
            return true;
          }));
        });
      }
    });
  }

  /* Compose: a live count of the people the chosen recipients reach, asked of the server (one
     COUNT there) a moment after the choice last changed. */
  function initRecipientCount() {
    var out = document.querySelector("[data-recipient-count]");
    var form = out && out.closest("form");
    if (!form) {
      return;
    }
    var names = ["users", "user_groups", "org_units", "org_unit_groups"];
    var button = form.querySelector("[data-count-button]");
    if (button) {
      button.hidden = true; // the count below is live
    }
    var timer = null;
    var seq = 0;

    function update() {
      var params = new URLSearchParams();
      names.forEach(function (name) {
        var input = form.elements[name];
        if (input && input.value.trim()) {
          params.set(name, input.value.trim());
        }
      });
      var desc = form.elements.include_descendants;
      if (desc && desc.checked) {
        params.set("include_descendants", "y");
      }
      var mode = form.querySelector('input[name="reply_mode"]:checked');
      if (mode) {
        params.set("reply_mode", mode.value);
      }
      var mine = ++seq;
      out.hidden = false;
      out.classList.remove("is-error");
      out.textContent = "Counting recipients…";
      fetch(out.getAttribute("data-url") + "?" + params.toString(), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      })
        .then(function (resp) {
          return resp.json().then(function (body) {
            return { ok: resp.ok, body: body };
          });
        })
        .then(function (r) {
          if (mine !== seq) {
            return; // a newer count has started
          }
          out.classList.toggle("is-error", !r.ok);
          out.setAttribute("data-count", r.ok ? String(r.body.count) : "");
          out.textContent = r.ok ? r.body.text : r.body.message;
        })
        .catch(function () {
          if (mine === seq) {
            out.textContent = "The number of recipients cannot be counted right now.";
          }
        });
    }

    function later() {
      window.clearTimeout(timer);
      timer = window.setTimeout(update, 400);
    }

    form.addEventListener("input", function (ev) {
      if (names.indexOf(ev.target.name) !== -1) {
        later();
      }
    });
    form.addEventListener("change", function (ev) {
      if (ev.target.name === "include_descendants" || ev.target.name === "reply_mode" || names.indexOf(ev.target.name) !== -1) {
        later();
      }
    });
    update();
  }

  /* Inbox: a "select all" box for the page, added only when scripts run. */
  function initBulk() {
    var form = document.querySelector("[data-bulk]");
    var toolbar = form && form.querySelector(".toolbar");
    if (!toolbar) {
      return;
    }
    var boxes = form.querySelectorAll('input[name="ids"]');
    var wrap = el("span", { class: "select-all" });
    var all = el("input", { type: "checkbox", id: "select-all" });
    wrap.appendChild(all);
    wrap.appendChild(el("label", { for: "select-all" }, "Select all on this page"));
    toolbar.insertBefore(wrap, toolbar.firstChild);
    all.addEventListener("change", function () {
      Array.prototype.forEach.call(boxes, function (b) {
        b.checked = all.checked;
      });
    });
  }

  /* Buttons that remove things ask first. */
  function initConfirm() {
    document.addEventListener("click", function (ev) {
      var btn = ev.target.closest("[data-confirm]");
      if (btn && !window.confirm(btn.getAttribute("data-confirm"))) {
        ev.preventDefault();
      }
    });
  }

  /* Times are sent in UTC; show them in the reader's own time zone. */
  function initTimes() {
    var now = new Date();
    Array.prototype.forEach.call(document.querySelectorAll("time[datetime]"), function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d.getTime())) {
        return;
      }
      var sameDay = d.toDateString() === now.toDateString();
      var opts = sameDay
        ? { hour: "2-digit", minute: "2-digit" }
        : d.getFullYear() === now.getFullYear()
        ? { day: "numeric", month: "short" }
        : { day: "numeric", month: "short", year: "numeric" };
      t.textContent = d.toLocaleString(undefined, opts);
      t.title = d.toLocaleString();
    });
  }

  /* A form returned with errors: move focus to the summary so it is read out first. */
  function initErrorSummary() {
    var summary = document.querySelector("[data-error-summary]");
    if (summary) {
      summary.focus();
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    initUnreadBadge();
    initDelivery();
    Array.prototype.forEach.call(document.querySelectorAll("[data-picker]"), initPicker);
    initRecipientCount();
    initBulk();
    initConfirm();
    initTimes();
    initErrorSummary();
  });
})();
