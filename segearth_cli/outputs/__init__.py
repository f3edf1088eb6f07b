"""Writers for the answer: mask GeoTIFF, polygons, quicklook."""
