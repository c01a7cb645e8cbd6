# test_actor.py
@actor
async def process(context):
    # Test compression with large data
    large_data = "x" * 10000  # Will be compressed
    await context.send_output("test", large_data)
    
    # Test Redis state
    counter = await context.get_state("counter", 0)
    await context.set_state("counter", counter + 1)
    
    return {"status": "success", "counter": counter}
