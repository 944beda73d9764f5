"""The API docs page works on a closed network: Swagger UI comes from the product."""

from __future__ import annotations

import re

from django.contrib.staticfiles import finders


def test_swagger_ui_loads_every_asset_from_the_product_itself(client):
    response = client.get("/api/v1/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    scripts_and_styles = [a for a in assets if a.endswith((".js", ".css", ".png"))]
    assert scripts_and_styles, html
    for asset in scripts_and_styles:
        assert asset.startswith("/static/"), f"{asset} is fetched from outside the product"
        assert finders.find(asset.removeprefix("/static/")), f"{asset} is not shipped"
    assert "cdn" not in html.lower()
