"""The command palette (ctrl+p): one provider, set once on the app, so every screen's actions can be
found by name wherever the palette is opened.

It lists, for the screen it is opened on (a dialog included): that screen's actions, i.e. its keys and
the keys of the widget with the focus that have a footer hint; then the way to every other screen; then
the app's own keys (quit). Each entry names its key, so the palette also teaches the keys. Nothing is
written twice: the entries are read from the bindings the footer shows.

While a text field has the focus, Textual leaves the screen's letter keys out of the footer (the field
takes them as text); the palette still offers those actions, and running one leaves the field first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from textual.actions import parse
from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.dom import DOMNode
from textual.keys import key_to_character
from textual.screen import Screen

HELP_MATCH_WEIGHT = 0.5  # a query that only matches the help text ranks below one that matches a name


@dataclass(frozen=True)
class PaletteCommand:
    label: str                  # "Validate (v)": what the palette shows and matches first
    help: str                   # the binding's tooltip: matched too, at a lower weight
    run: Callable[[], object]


GOTO_ID = "goto-"  # the app's bindings that switch screens have ids "goto-<mode>"


def _command(app: App, b: Binding, label: str, run: Callable[[], object]) -> PaletteCommand:
    return PaletteCommand(f"{label} ({app.get_key_display(b)})", b.tooltip or b.description, run)


def _enabled(node: DOMNode, action: str) -> bool:
    namespace, name, params = parse(action)
    return not namespace and bool(node.check_action(name, params))


def taken_by_field(screen: Screen) -> list[Binding]:
    """The screen's keys that the focused widget takes as text (an input takes letters), so they are not
    active now; their actions still are."""
    focused = screen.focused
    if focused is None:
        return []
    return [b for b in Binding.make_bindings(type(screen).BINDINGS)
            if b.description and b.show and focused.check_consume_key(b.key, key_to_character(b.key))
            and _enabled(screen, b.action)]


async def _leave_field_and_run(screen: Screen, action: str) -> None:
    screen.set_focus(None)  # from here on the screen's letter keys work again, as the footer then shows
    await screen.run_action(action)


def palette_commands(screen: Screen) -> list[PaletteCommand]:
    """The palette's entries on ``screen``: its actions, the other screens, the app's keys."""
    app = screen.app
    mine: list[PaletteCommand] = []
    goto: list[PaletteCommand] = []
    app_keys: list[PaletteCommand] = []
    seen: set[tuple[int, str]] = set()
    for active in screen.active_bindings.values():
        node, b = active.node, active.binding
        if not (b.description and b.show) or (id(node), b.action) in seen:
            continue  # not an action with a footer hint, or one already listed under another key
        if node is app:
            if b.id and b.id.startswith(GOTO_ID):
                if active.enabled and b.id[len(GOTO_ID):] != app.current_mode:
                    goto.append(_command(app, b, f"Go to {b.description}", partial(node.run_action, b.action)))
            elif active.enabled:
                app_keys.append(_command(app, b, b.description, partial(node.run_action, b.action)))
        elif active.enabled:
            mine.append(_command(app, b, b.description, partial(node.run_action, b.action)))
        else:
            continue
        seen.add((id(node), b.action))
    for b in taken_by_field(screen):
        if (id(screen), b.action) not in seen:
            seen.add((id(screen), b.action))
            mine.append(_command(app, b, b.description, partial(_leave_field_and_run, screen, b.action)))
    return mine + goto + app_keys


class ActionsProvider(Provider):
    """Every action of the screen the palette was opened on, the other screens, and the app's keys."""

    def _commands(self) -> list[PaletteCommand]:
        return palette_commands(self.screen)

    async def discover(self) -> Hits:
        for c in self._commands():
            yield DiscoveryHit(c.label, c.run, help=c.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for c, score in _scored(self._commands(), matcher.match):
            yield Hit(score, matcher.highlight(c.label), c.run, text=c.label, help=c.help)


def _scored(commands: list[PaletteCommand], match: Callable[[str], float]) -> Iterator[tuple[PaletteCommand, float]]:
    for c in commands:
        score = match(c.label) or HELP_MATCH_WEIGHT * match(c.help)
        if score > 0:
            yield c, score
