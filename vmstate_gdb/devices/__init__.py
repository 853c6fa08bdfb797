"""Device state: the generic tree built from the VMDESCRIPTION, hand decoders, NIC knowledge."""
