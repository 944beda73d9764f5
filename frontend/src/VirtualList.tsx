/** A list that renders only the rows in view, so thousands of files stay responsive. */
import { useState, type ReactNode } from "react";

interface Props<T> {
  items: readonly T[];
  rowHeight: number;
  height: number;
  render: (item: T, index: number) => ReactNode;
  label: string;
}

// Rows rendered beyond the visible ones, so fast scrolling does not show gaps.
const OVERSCAN = 8;

export function VirtualList<T>({ items, rowHeight, height, render, label }: Props<T>) {
  const [scrollTop, setScrollTop] = useState(0);
  const first = Math.max(0, Math.floor(scrollTop / rowHeight) - OVERSCAN);
  const last = Math.min(items.length, Math.ceil((scrollTop + height) / rowHeight) + OVERSCAN);
  const viewHeight = Math.min(height, items.length * rowHeight);
  return (
    <div
      className="virtual-list"
      role="list"
      aria-label={label}
      style={{ height: viewHeight, overflowY: "auto", position: "relative" }}
      onScroll={(e) => setScrollTop(e.currentTarget.scrollTop)}
    >
      <div style={{ height: items.length * rowHeight, position: "relative" }}>
        {items.slice(first, last).map((item, i) => (
          <div role="listitem" key={first + i} style={{ position: "absolute", top: (first + i) * rowHeight, height: rowHeight, left: 0, right: 0 }}>
            {render(item, first + i)}
          </div>
        ))}
      </div>
    </div>
  );
}
