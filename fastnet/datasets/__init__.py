"""Small datasets bundled with fastnet (see fastnet.data.load_digits)."""
