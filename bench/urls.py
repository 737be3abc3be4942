"""The product's URLs and the benchmark's endpoints (bench/hooks.py); only bench.settings uses it."""

from bench.hooks import urlpatterns as bench_urlpatterns
from rmm.urls import urlpatterns as product_urlpatterns

urlpatterns = bench_urlpatterns + product_urlpatterns
