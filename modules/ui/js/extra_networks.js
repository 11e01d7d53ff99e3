// The extra-networks panel (modules/ui/extra_networks.py): search, sort and the directory filter
// of each page's cards run here, in the browser; a card click, the 🛠 button and 🔄 are sent to
// the server through the cards' / controls' gr.HTML `trigger` (see `bindCards` / `bindControls`).
//   card click  -> trigger("click", {key, negative})  toggles the card's text in the prompts
//                  (checkpoints: trigger("select", {key}) switches the checkpoint)
//   🛠          -> trigger("edit", {key})             opens the user-metadata editor
//   🔄          -> trigger("click", {})               rescans the registry, rebuilds the cards
// `negative`: the negative prompt box had the focus last (embeddings go into the box in use).
(() => {
  "use strict";

  const GENERATION_TABS = ["txt2img", "img2img"];
  const lastBox = {}; // "txt2img" -> "prompt" | "negative"
  const views = {}; // "txt2img_lora" -> {sortKey, descending, dirsShown}

  document.addEventListener("focusin", (event) => {
    const area = event.target;
    if (!(area instanceof HTMLTextAreaElement)) return;
    for (const tab of GENERATION_TABS) {
      if (area.closest(`#${tab}_prompt`)) lastBox[tab] = "prompt";
      else if (area.closest(`#${tab}_neg_prompt`)) lastBox[tab] = "negative";
    }
  });

  function byId(id) {
    return document.getElementById(id);
  }

  function view(full) {
    if (!views[full]) {
      const controls = byId(`${full}_controls`);
      if (!controls) return { sortKey: "default", descending: false, dirsShown: true };
      const active = document.querySelector(`#${full}_controls .sdw-en-sort.sdw-en-enabled`);
      const dir = byId(`${full}_extra_sort_dir`);
      const tree = byId(`${full}_extra_tree_view`);
      views[full] = {
        sortKey: active ? active.dataset.sortkey : "default",
        descending: !!dir && dir.dataset.sortdir === "Descending",
        dirsShown: !tree || tree.classList.contains("sdw-en-enabled"),
      };
    }
    return views[full];
  }

  function searchTerm(full) {
    const box = byId(`${full}_extra_search`);
    return box ? box.value.trim().toLowerCase() : "";
  }

  function sortValue(card, key) {
    const name = "sort" + key.charAt(0).toUpperCase() + key.slice(1);
    return card.dataset[name] || "";
  }

  function compare(a, b) {
    const numeric = /^-?\d+(\.\d+)?$/;
    if (numeric.test(a) && numeric.test(b)) return parseFloat(a) - parseFloat(b);
    return a < b ? -1 : a > b ? 1 : 0;
  }

  // Show the cards that match the search, in the chosen order; the directory buttons as chosen.
  function apply(full) {
    const container = byId(`${full}_cards`);
    if (!container) return;
    const settings = view(full);
    const term = searchTerm(full);
    const cards = Array.from(container.querySelectorAll(":scope > .sdw-en-card"));
    for (const card of cards) {
      let shown = (card.dataset.search || "").includes(term);
      if (card.classList.contains("search_only") && term.length < 4) shown = false;
      card.classList.toggle("sdw-en-hidden", !shown);
    }
    const sorted = cards.slice().sort((a, b) => {
      const order = compare(sortValue(a, settings.sortKey), sortValue(b, settings.sortKey));
      return order || compare(sortValue(a, "default"), sortValue(b, "default"));
    });
    if (settings.descending) sorted.reverse();
    if (sorted.some((card, i) => card !== cards[i])) {
      const fragment = document.createDocumentFragment();
      for (const card of sorted) fragment.appendChild(card);
      container.appendChild(fragment);
    }
    const dirs = byId(`${full}_dirs`);
    if (dirs) {
      dirs.classList.toggle("sdw-en-dirs-hidden", !settings.dirsShown);
      for (const button of dirs.querySelectorAll(".sdw-en-dir")) {
        button.classList.toggle("sdw-en-selected", (button.dataset.path || "").toLowerCase() === term);
      }
    }
  }

  function setSearch(full, text) {
    const box = byId(`${full}_extra_search`);
    if (box) box.value = text;
    apply(full);
  }

  function paneOf(element) {
    return element.querySelector(".sdw-en-pane");
  }

  function fullOf(pane) {
    return pane.id.replace(/_pane$/, "");
  }

  // The cards' gr.HTML: clicks on cards, their 🛠 and the directory buttons; the search and sort
  // are applied again whenever the server sends new cards.
  function bindCards(element, trigger, watch) {
    element.addEventListener("click", (event) => {
      const pane = paneOf(element);
      if (!pane) return;
      const full = fullOf(pane);
      const target = event.target instanceof Element ? event.target : null;
      if (!target) return;
      const dir = target.closest(".sdw-en-dir");
      if (dir) {
        const path = dir.dataset.path || "";
        setSearch(full, searchTerm(full) === path.toLowerCase() ? "" : path);
        return;
      }
      const card = target.closest(".sdw-en-card");
      if (!card) return;
      event.preventDefault();
      if (target.closest(".sdw-en-edit")) {
        trigger("edit", { key: card.dataset.key });
        return;
      }
      const tab = pane.dataset.tab;
      trigger(pane.dataset.click || "click", { key: card.dataset.key, negative: lastBox[tab] === "negative" });
    });
    const refresh = () => {
      const pane = paneOf(element);
      if (pane) apply(fullOf(pane));
    };
    if (typeof watch === "function") watch("value", refresh);
    refresh();
  }

  // The controls' gr.HTML: search box, sort buttons, sort direction, directory view, refresh.
  function bindControls(element, trigger) {
    const controls = element.querySelector(".sdw-en-controls");
    if (!controls) return;
    const full = controls.id.replace(/_controls$/, "");
    const search = byId(`${full}_extra_search`) || controls.querySelector(".sdw-en-search");
    search.addEventListener("input", () => apply(full));
    controls.addEventListener("click", (event) => {
      const button = event.target instanceof Element ? event.target.closest("button") : null;
      if (!button) return;
      const settings = view(full);
      if (button.classList.contains("sdw-en-sort")) {
        for (const other of controls.querySelectorAll(".sdw-en-sort")) {
          other.classList.toggle("sdw-en-enabled", other === button);
        }
        settings.sortKey = button.dataset.sortkey;
      } else if (button.classList.contains("sdw-en-sort-dir")) {
        settings.descending = !settings.descending;
        const direction = settings.descending ? "Descending" : "Ascending";
        button.dataset.sortdir = direction;
        button.title = `Sort ${direction.toLowerCase()}`;
        button.textContent = settings.descending ? "↓" : "↑";
      } else if (button.classList.contains("sdw-en-tree")) {
        settings.dirsShown = !settings.dirsShown;
        button.classList.toggle("sdw-en-enabled", settings.dirsShown);
      } else if (button.classList.contains("sdw-en-refresh")) {
        trigger("click", {});
        return;
      }
      apply(full);
    });
  }

  window.sdwExtraNetworks = { bindCards, bindControls, apply };
})();
