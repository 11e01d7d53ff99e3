// A1111's keyboard shortcuts (a1111-ui/NOTES.md "Keyboard shortcuts"), for the generation tab on
// screen (txt2img or img2img):
//   Ctrl+Enter  Generate; while a job runs: Interrupt, then Generate again once it stopped
//   Alt+Enter   Skip the current image (while a job runs)
//   Esc         Interrupt (while a job runs)
//   Ctrl+Up / Ctrl+Down in a prompt box: raise / lower the attention weight of the selection or
//   the word under the caret, "(word:1.1)", in steps of 0.1; weight 1.0 removes the brackets.
(() => {
  "use strict";

  const GENERATION_TABS = ["txt2img", "img2img"];

  function shown(el) {
    return !!el && el.offsetParent !== null;
  }

  function currentTab() {
    for (const name of GENERATION_TABS) {
      if (shown(document.getElementById(`tab_${name}`))) return name;
    }
    return null;
  }

  function button(tab, what) {
    return document.getElementById(`${tab}_${what}`);
  }

  function generateWhenIdle(tab, deadline) {
    const generate = button(tab, "generate");
    if (shown(generate)) {
      generate.click();
    } else if (Date.now() < deadline) {
      setTimeout(() => generateWhenIdle(tab, deadline), 100);
    }
  }

  function roundWeight(value) {
    return Math.round(value * 100) / 100;
  }

  // "(text:1.2)" around [start, end) of `value`, or a changed weight when already wrapped
  function editAttention(area, delta) {
    let value = area.value;
    let start = area.selectionStart;
    let end = area.selectionEnd;
    if (start === end) {
      // the word under the caret
      const before = value.slice(0, start).search(/[^\s,()[\]]*$/);
      const afterMatch = value.slice(start).match(/^[^\s,()[\]:]*/);
      start = before;
      end = end + (afterMatch ? afterMatch[0].length : 0);
      if (start === end) return false;
    }
    const inner = value.slice(start, end);
    const open = value.lastIndexOf("(", start);
    const close = value.indexOf(")", end);
    const weighted = open >= 0 && close >= 0 ? value.slice(open, close + 1) : "";
    const match = weighted.match(/^\(([^()]*):(-?\d+(?:\.\d+)?)\)$/);
    if (match && open + 1 <= start && end <= open + 1 + match[1].length) {
      const weight = roundWeight(parseFloat(match[2]) + delta);
      const text = match[1];
      const replacement = weight === 1 ? text : `(${text}:${weight})`;
      value = value.slice(0, open) + replacement + value.slice(close + 1);
      const offset = weight === 1 ? open : open + 1;
      area.value = value;
      area.setSelectionRange(offset, offset + text.length);
    } else {
      const weight = roundWeight(1 + delta);
      const replacement = weight === 1 ? inner : `(${inner}:${weight})`;
      area.value = value.slice(0, start) + replacement + value.slice(end);
      const offset = weight === 1 ? start : start + 1;
      area.setSelectionRange(offset, offset + inner.length);
    }
    area.dispatchEvent(new Event("input", { bubbles: true }));
    return true;
  }

  function isPromptBox(el) {
    return (
      el instanceof HTMLTextAreaElement &&
      !!el.closest("[id$='_prompt'], [id$='_neg_prompt']")
    );
  }

  document.addEventListener(
    "keydown",
    (event) => {
      const tab = currentTab();
      if (!tab) return;
      const running = shown(button(tab, "interrupt"));
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !event.altKey) {
        event.preventDefault();
        if (running) {
          button(tab, "interrupt").click();
          generateWhenIdle(tab, Date.now() + 60_000);
        } else {
          button(tab, "generate")?.click();
        }
      } else if (event.key === "Enter" && event.altKey && running) {
        event.preventDefault();
        button(tab, "skip")?.click();
      } else if (event.key === "Escape" && running) {
        event.preventDefault();
        button(tab, "interrupt").click();
      } else if (
        (event.key === "ArrowUp" || event.key === "ArrowDown") &&
        (event.ctrlKey || event.metaKey) &&
        isPromptBox(event.target)
      ) {
        if (editAttention(event.target, event.key === "ArrowUp" ? 0.1 : -0.1)) event.preventDefault();
      }
    },
    true,
  );
})();
