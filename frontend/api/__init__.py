"""The two protocol shells, thin codecs over the dataplane: codedserve.v1 Classify and KServe v2 ModelInfer."""
