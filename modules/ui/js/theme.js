// Light/dark page (modules/ui/theme.py). The server's mode ("light", "dark" or "auto": the
// --theme flag, else the ui_color_mode option) arrives through the quicksettings row's page-load
// event, which calls window.sdwColorMode.apply(mode). The mode is remembered in localStorage so
// that the next load starts in it before the server answers. Gradio itself reads the `__theme`
// URL parameter and puts the `dark` class on <body>; this script keeps both in step.
(() => {
    if (window.sdwColorMode) return;
    const KEY = "sdw-color-mode";
    const url = new URL(window.location.href);
    // a `__theme` the user typed is theirs to keep while the mode is "auto"; one this script set
    // (it equals the remembered mode) is not
    let typed = url.searchParams.get("__theme");
    let ownParam = false;

    function setParam(value) {
        const here = new URL(window.location.href);
        if (value === null) here.searchParams.delete("__theme");
        else here.searchParams.set("__theme", value);
        if (here.href !== window.location.href) window.history.replaceState(window.history.state, "", here.href);
    }

    function systemMode() {
        return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
    }

    function setClass(dark) {
        const apply = () => document.body.classList.toggle("dark", dark);
        if (document.body) apply();
        else document.addEventListener("DOMContentLoaded", apply, { once: true });
    }

    function apply(mode) {
        if (mode !== "light" && mode !== "dark") mode = "auto";
        try {
            window.localStorage.setItem(KEY, mode);
        } catch (e) {
            // storage disabled: the mode still applies to this page
        }
        if (mode === "auto") {
            if (ownParam) {
                setParam(null);
                ownParam = false;
            }
            const wanted = typed === "light" || typed === "dark" ? typed : systemMode();
            setClass(wanted === "dark");
            return;
        }
        setParam(mode);
        ownParam = typed !== mode;
        setClass(mode === "dark");
    }

    let remembered = null;
    try {
        remembered = window.localStorage.getItem(KEY);
    } catch (e) {
        remembered = null;
    }
    if (remembered === "light" || remembered === "dark") {
        if (typed === remembered) typed = null;
        apply(remembered);
    }

    window.sdwColorMode = { apply };
})();
