// Keyboard navigation for lists: ArrowDown/j and ArrowUp/k move between rows ([data-row], focusable),
// Home/End jump, Enter or o opens the focused row's link.

export function listKeys(node: HTMLElement) {
  function onKey(event: KeyboardEvent) {
    const target = event.target as HTMLElement;
    if (target.matches("input, select, textarea, button")) return;
    const rows = Array.from(node.querySelectorAll<HTMLElement>("[data-row]"));
    if (rows.length === 0) return;
    const index = rows.indexOf(target.closest("[data-row]") as HTMLElement);
    let next = -1;
    if (event.key === "ArrowDown" || event.key === "j") next = Math.min(index + 1, rows.length - 1);
    else if (event.key === "ArrowUp" || event.key === "k") next = Math.max(index - 1, 0);
    else if (event.key === "Home") next = 0;
    else if (event.key === "End") next = rows.length - 1;
    else if ((event.key === "Enter" || event.key === "o") && index >= 0) {
      rows[index].querySelector<HTMLAnchorElement>("a")?.click();
      event.preventDefault();
      return;
    } else return;
    event.preventDefault();
    rows[next].focus();
  }
  node.addEventListener("keydown", onKey);
  return { destroy: () => node.removeEventListener("keydown", onKey) };
}
