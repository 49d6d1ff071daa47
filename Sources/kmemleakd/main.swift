import KmemleakFS
print("kmemleakd: not yet")
