"""kvconform's reference decode-staging implementation: the spec in code.

Modules: ``topology`` (who holds which head, who writes to whom),
``layout`` (staging byte layout), ``allocator`` (staging ring and watermark),
``kv_copy`` (bit-exact torch gather / scatter / direct copy),
``receivers`` (staged or plain path), ``handler`` (decode request lifecycle),
``transport`` (simulated RDMA write), ``end_to_end`` (one request, P to D),
``plugin`` (the kvconform plug-in object).
"""
