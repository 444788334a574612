"""The new-run form, generated from the TrainSpec settings marked for it (label, kind, choices, help).

One compact row per setting, so the whole form fits a 24-line terminal. Each entry is checked on its
own when it changes (its parse, the setting's own rule, the file it names); settings that depend on
each other are checked together after that. The words are the engine's, without CLI flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.reactive import var
from textual.widgets import Checkbox, Input, Label, Select, Static

from medtui_engine.train.spec import (
    Problem,
    Setting,
    TrainSpec,
    cross_problems,
    form_settings,
    validate_field,
)

FORM_TITLE = "New training run (the seed's settings; change what you need)"


def entry_for(name: str, s: Setting):
    """The one-line entry widget for a setting."""
    wid, hint = f"f-{name}", s.form_hint
    if s.kind == "bool":
        return Checkbox(hint, value=False, id=wid, tooltip=hint or None, compact=True)
    if s.kind == "choice":
        return Select([(c, c) for c in s.choices], allow_blank=False, id=wid, tooltip=hint or None, compact=True)
    return Input(id=wid, classes="form-input", placeholder=hint, tooltip=hint or None, compact=True)


class TrainForm(VerticalScroll):
    """The settings of a new run. ``spec()`` is what it says; ``ok`` whether it may start."""

    problems: var[dict[str, str]] = var(dict, init=False)
    """Each form setting's problem (the message shown under its row)."""
    general: var[tuple[str, ...]] = var(tuple, init=False)
    """Problems of settings that are not on the form (shown below it)."""

    @dataclass
    class Checked(Message):
        """The form's problems changed: ``ok`` says whether it may start."""

        ok: bool

    @dataclass
    class Edited(Message):
        """The user changed ``name`` (not sent while the form is filled)."""

        name: str

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.settings: dict[str, Setting] = dict(form_settings())
        self.base = TrainSpec()
        self.values: dict[str, Any] = {}
        self._own: dict[str, str] = {}   # each field's own problem, kept while other fields change
        self.ready = False               # set once filled: changes before that are not the user's
        self.edited: set[str] = set()    # settings the user changed: the auto recipe keeps them
        self.recipe_owned: set[str] = set()   # entries that show the recipe's choice, not a value of their own

    def compose(self) -> ComposeResult:
        yield Label(FORM_TITLE, classes="section-title")
        for name, s in self.settings.items():
            with Horizontal(classes="form-row", id=f"row-{name}"):
                yield Label(s.label, classes="form-label")
                yield entry_for(name, s)
            yield Static("", classes="form-error", id=f"err-{name}")

    # ---- values in and out
    def fill(self, spec: TrainSpec) -> None:
        """Show ``spec``'s values (the defaults for a new run) and check each once."""
        self.base = spec
        self.ready = False
        self.edited = set()
        self.recipe_owned = set()
        # filling the form is not the user changing it: one check per field here, none per event
        with self.prevent(Input.Changed, Select.Changed, Checkbox.Changed):
            for name in self.settings:
                self._show(name, getattr(spec, name))
        for name in self.settings:
            self._check(name)
        self._publish()
        self.call_after_refresh(self._set_ready)

    def _set_ready(self) -> None:
        self.ready = True

    def _show(self, name: str, value: Any) -> None:
        s, w = self.settings[name], self.query_one(f"#f-{name}")
        if s.kind == "bool":
            w.value = bool(value)
        elif s.kind == "choice":
            w.value = value
        else:
            w.value = s.format(value)

    def set_value(self, name: str, value: Any) -> None:
        """Put ``value`` in ``name``'s entry and check it (also before the form is ready)."""
        self._show(name, value)
        self._check(name)
        self._publish()

    def show_recipe(self, values: dict[str, Any]) -> None:
        """Show the recipe's choice in the entries the user left to it (they stay the recipe's: a change
        of the data, the model or the recipe may choose again); the rows say ``auto``."""
        mine = set(self.edited) | set(self.base.explicit)
        self.recipe_owned = {name for name in values if name in self.settings and name not in mine}
        with self.prevent(Input.Changed, Select.Changed, Checkbox.Changed):
            for name, value in values.items():
                if name in self.settings and name not in mine:
                    self._show(name, value)
        for name in values:
            if name in self.settings:
                self.query_one(f"#row-{name}").set_class(name not in mine, "-recipe")
                if name not in mine:
                    self._check(name)
        self._publish()

    def spec(self) -> TrainSpec:
        """The base spec with every entry that parses; what the user changed is ``explicit``. An entry left to
        the recipe keeps the base value (it only shows the recipe's choice), so a change of recipe, data or
        model chooses again from the same start: the seed recipe gets the seed's settings, not auto's."""
        left = self.recipe_owned - set(self.edited)
        spec = TrainSpec(**{**self.base.__dict__, **{k: v for k, v in self.values.items() if k not in left}})
        spec.explicit = sorted(set(self.base.explicit) | (self.edited & set(self.values)))
        spec.resolved_recipe = {}
        return spec

    @property
    def ok(self) -> bool:
        return not self.problems and not self.general

    # ---- checking
    def _check(self, name: str) -> None:
        """Parse and check one entry on its own; the result is kept for that field."""
        s = self.settings[name]
        raw = self.query_one(f"#f-{name}").value
        self.values.pop(name, None)
        try:
            value = s.parse(raw)
        except ValueError as exc:
            self._own[name] = Problem(name, str(exc)).message()
            return
        self.values[name] = value
        problems = validate_field(name, value, check_files=True)
        if problems:
            self._own[name] = "\n".join(p.message() for p in problems)
        else:
            self._own.pop(name, None)

    def _publish(self) -> None:
        """Combine the fields' own problems with those of settings together, and show them."""
        per = dict(self._own)
        general = []
        for p in cross_problems(self.spec()):
            if p.field in self.settings and p.field not in per:
                per[p.field] = p.message()
            elif p.field not in self.settings:
                general.append(p.message())
        self.problems = per
        self.general = tuple(general)
        self.post_message(self.Checked(self.ok))

    def recheck(self) -> bool:
        """Check every entry again (files may have come or gone since); True when it may start."""
        for name in self.settings:
            self._check(name)
        self._publish()
        return self.ok

    def watch_problems(self, old: dict[str, str], new: dict[str, str]) -> None:
        for name in self.settings:
            if old.get(name) == new.get(name):
                continue
            msg = new.get(name, "")
            err = self.query_one(f"#err-{name}", Static)
            err.update(msg)
            err.display = bool(msg)
            self.query_one(f"#f-{name}").set_class(bool(msg), "-invalid")

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def _changed(self, event) -> None:
        wid = str(getattr(event.control, "id", "") or "")
        name = wid.removeprefix("f-")
        if not self.ready or not wid.startswith("f-") or name not in self.settings:
            return
        self.edited.add(name)
        self.query_one(f"#row-{name}").remove_class("-recipe")
        self._check(name)
        self._publish()
        self.post_message(self.Edited(name))
