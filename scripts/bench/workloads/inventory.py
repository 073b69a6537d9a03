"""A small inventory module: items, stock levels and a plain-text report."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

LOW_STOCK_LIMIT = 5
CURRENCY = "EUR"


def parse_price(text: str) -> float:
    """Turn a price such as '12.50' or '12,50 EUR' into a float."""
    cleaned = text.replace(CURRENCY, "").replace(",", ".").strip()
    if not cleaned:
        raise ValueError("empty price")
    value = float(cleaned)
    if value < 0:
        raise ValueError(f"negative price: {value}")
    return value


def format_price(value: float) -> str:
    """Format a float as a price with two decimals and the currency."""
    return f"{value:.2f} {CURRENCY}"


@dataclass
class Item:
    sku: str
    name: str
    price: float
    quantity: int = 0
    tags: list[str] = field(default_factory=list)

    def value(self) -> float:
        return self.price * self.quantity

    def is_low(self) -> bool:
        return self.quantity < LOW_STOCK_LIMIT

    def has_tag(self, tag: str) -> bool:
        return tag.lower() in (t.lower() for t in self.tags)


class Inventory:
    def __init__(self) -> None:
        self.items: dict[str, Item] = {}

    def add_item(self, item: Item) -> None:
        if item.sku in self.items:
            raise KeyError(f"duplicate sku: {item.sku}")
        self.items[item.sku] = item

    def remove_item(self, sku: str) -> Item:
        if sku not in self.items:
            raise KeyError(f"unknown sku: {sku}")
        return self.items.pop(sku)

    def restock(self, sku: str, amount: int) -> int:
        if amount <= 0:
            raise ValueError("amount must be positive")
        item = self.items[sku]
        item.quantity += amount
        return item.quantity

    def sell(self, sku: str, amount: int) -> float:
        item = self.items[sku]
        if amount > item.quantity:
            raise ValueError(f"only {item.quantity} left of {item.name}")
        item.quantity -= amount
        return item.price * amount

    def total_value(self) -> float:
        return sum(item.value() for item in self.items.values())

    def low_stock(self) -> list[Item]:
        return [item for item in self.items.values() if item.is_low()]

    def find_by_tag(self, tag: str) -> list[Item]:
        return [item for item in self.items.values() if item.has_tag(tag)]

    def find_by_name(self, text: str) -> list[Item]:
        text = text.lower()
        return [item for item in self.items.values() if text in item.name.lower()]

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["sku", "name", "price", "quantity", "tags"])
        for item in sorted(self.items.values(), key=lambda i: i.sku):
            writer.writerow([item.sku, item.name, f"{item.price:.2f}", item.quantity, ";".join(item.tags)])
        return out.getvalue()

    @classmethod
    def from_csv(cls, text: str) -> "Inventory":
        inventory = cls()
        for row in csv.DictReader(io.StringIO(text)):
            tags = [t for t in row["tags"].split(";") if t]
            item = Item(row["sku"], row["name"], parse_price(row["price"]), int(row["quantity"]), tags)
            inventory.add_item(item)
        return inventory


def report(inventory: Inventory) -> str:
    """A plain-text report: one line per item, then totals and low-stock warnings."""
    lines = ["SKU      NAME                 QTY      VALUE"]
    for item in sorted(inventory.items.values(), key=lambda i: i.name):
        lines.append(f"{item.sku:<8} {item.name:<20} {item.quantity:>3} {format_price(item.value()):>12}")
    lines.append("")
    lines.append(f"Total value: {format_price(inventory.total_value())}")
    low = inventory.low_stock()
    if low:
        lines.append("Low stock: " + ", ".join(item.name for item in low))
    else:
        lines.append("Low stock: none")
    return "\n".join(lines)


def demo() -> Inventory:
    inventory = Inventory()
    inventory.add_item(Item("A100", "Blue pen", 1.20, 40, ["office", "writing"]))
    inventory.add_item(Item("A101", "Red pen", 1.20, 3, ["office", "writing"]))
    inventory.add_item(Item("B200", "Notebook", 3.50, 12, ["office", "paper"]))
    inventory.add_item(Item("C300", "Desk lamp", 24.90, 2, ["furniture", "light"]))
    inventory.add_item(Item("D400", "Stapler", 7.80, 6, ["office"]))
    return inventory


def main() -> None:
    inventory = demo()
    inventory.sell("A100", 5)
    inventory.restock("C300", 4)
    print(report(inventory))
    print()
    print(inventory.to_csv())
    for item in inventory.find_by_tag("writing"):
        print(f"{item.name}: {format_price(item.price)}")


if __name__ == "__main__":
    main()
