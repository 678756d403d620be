"""digits_app: a small Flower app that trains an MLP on scikit-learn's bundled digits."""
