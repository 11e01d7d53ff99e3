// A1111's page helpers, for extensions' javascript/*.js (loaded after this file): gradioApp(),
// onUiUpdate(cb) (each DOM change, with the MutationRecords), onAfterUiUpdate(cb) (once the page has
// been quiet for 200 ms), onUiLoaded(cb) (once, when the txt2img prompt exists), onUiTabChange(cb),
// onOptionsChanged(cb) / onOptionsAvailable(cb), the `opts` dict (the options' current values, read
// from the hidden #settings_json box the Settings tab fills), get_uiCurrentTab(),
// get_uiCurrentTabContent(), updateInput(el), executeCallbacks(), uiElementIsVisible(el) and
// uiElementInSight(el). Top-level declarations on purpose: extension code calls them as globals.

/* eslint-disable no-unused-vars, no-var */
var opts = {};
var uiUpdateCallbacks = [];
var uiAfterUpdateCallbacks = [];
var uiLoadedCallbacks = [];
var uiTabChangeCallbacks = [];
var optionsChangedCallbacks = [];
var optionsAvailableCallbacks = [];
var uiAfterUpdateTimeout = null;
var uiCurrentTab = null;
var executedOnLoaded = false;

function gradioApp() {
  const elems = document.getElementsByTagName("gradio-app");
  const elem = elems.length === 0 ? document : elems[0];
  if (elem !== document) {
    elem.getElementById = function (id) {
      return document.getElementById(id);
    };
  }
  return elem.shadowRoot ? elem.shadowRoot : elem;
}

// The selected top-level tab's button ("txt2img", "Extras"...): Gradio 6 keeps the top-level tab
// buttons in #tabs > .tab-wrapper (A1111's Gradio 3 in #tabs > .tab-nav).
function get_uiCurrentTab() {
  return gradioApp().querySelector("#tabs > .tab-nav > button.selected, #tabs > .tab-wrapper button.selected");
}

// The shown top-level tab's content (the element with id tab_<name>).
function get_uiCurrentTabContent() {
  return gradioApp().querySelector('#tabs > .tabitem[id^=tab_]:not([style*="display: none"])');
}

function onUiUpdate(callback) {
  uiUpdateCallbacks.push(callback);
}

function onAfterUiUpdate(callback) {
  uiAfterUpdateCallbacks.push(callback);
}

function onUiLoaded(callback) {
  uiLoadedCallbacks.push(callback);
}

function onUiTabChange(callback) {
  uiTabChangeCallbacks.push(callback);
}

function onOptionsChanged(callback) {
  optionsChangedCallbacks.push(callback);
}

function onOptionsAvailable(callback) {
  if (Object.keys(opts).length !== 0) {
    callback();
    return;
  }
  optionsAvailableCallbacks.push(callback);
}

function executeCallbacks(queue, arg) {
  for (const callback of queue) {
    try {
      callback(arg);
    } catch (e) {
      console.error("error running callback", callback, ":", e);
    }
  }
}

// Tell Gradio an input's value was set from code.
function updateInput(target) {
  const e = new Event("input", { bubbles: true });
  Object.defineProperty(e, "target", { value: target });
  target.dispatchEvent(e);
}

function uiElementIsVisible(el) {
  if (el === document) return true;
  const computedStyle = getComputedStyle(el);
  const isVisible = computedStyle.display !== "none";
  if (!isVisible) return false;
  return uiElementIsVisible(el.parentNode);
}

function uiElementInSight(el) {
  const clRect = el.getBoundingClientRect();
  const windowHeight = window.innerHeight;
  return clRect.top < windowHeight && clRect.bottom > 0;
}

(function () {
  let optionsText = null;

  // `opts` follows #settings_json (filled at page load and after "Apply settings")
  function readOptions() {
    const box = gradioApp().getElementById("settings_json");
    const area = box && box.querySelector("textarea, input");
    if (!area || !area.value || area.value === optionsText) return;
    let parsed;
    try {
      parsed = JSON.parse(area.value);
    } catch (e) {
      return;
    }
    const first = optionsText === null;
    optionsText = area.value;
    for (const key of Object.keys(opts)) delete opts[key];
    Object.assign(opts, parsed);
    if (first) {
      executeCallbacks(optionsAvailableCallbacks);
      optionsAvailableCallbacks = [];
    }
    executeCallbacks(optionsChangedCallbacks);
  }

  function scheduleAfterUiUpdateCallbacks() {
    clearTimeout(uiAfterUpdateTimeout);
    uiAfterUpdateTimeout = setTimeout(function () {
      readOptions();
      executeCallbacks(uiAfterUpdateCallbacks);
    }, 200);
  }

  function start() {
    const observer = new MutationObserver(function (mutations) {
      if (!executedOnLoaded && gradioApp().getElementById("txt2img_prompt")) {
        executedOnLoaded = true;
        readOptions();
        executeCallbacks(uiLoadedCallbacks);
      }
      executeCallbacks(uiUpdateCallbacks, mutations);
      scheduleAfterUiUpdateCallbacks();
      const newTab = get_uiCurrentTab();
      if (newTab && newTab !== uiCurrentTab) {
        uiCurrentTab = newTab;
        executeCallbacks(uiTabChangeCallbacks);
      }
    });
    observer.observe(document.body || document.documentElement, { childList: true, subtree: true });
    // a value Gradio sets is no DOM change: look again now and then until the options are read
    const poll = setInterval(function () {
      readOptions();
      if (optionsText !== null) clearInterval(poll);
    }, 500);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
