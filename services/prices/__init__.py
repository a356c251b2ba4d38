"""The prices service: day-ahead or fixed energy prices on `<base>/prices`."""
